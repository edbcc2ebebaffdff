"""Driver plugins: the protocols (``drivers.base``), the registry and the built-in backends.

See ``drivers.registry`` for how a ``[drivers]`` config resolves, hw-docs/ for wiring.
"""
