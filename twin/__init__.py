"""ocpp-twin: a digital twin of the XJ Power iEVQC33 OCPP 1.6J charging station.

The package version *is* the station's firmware version: BootNotification
reports ``"V" + __version__``, and a firmware bundle carries a bumped version.
"""

__version__ = "1.10"
