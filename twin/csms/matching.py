"""Subset matching of payloads, shared by `Csms.wait_for` and the test-side OCTT matcher."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# What a caller may pass to select a payload: a dict that must be a subset of it,
# a predicate on the whole payload, or None (anything).
PayloadPattern = Mapping[str, Any] | Callable[[Any], bool] | None


def subset_match(expected: Any, actual: Any) -> bool:
    """True if ``actual`` contains ``expected``.

    Dicts match recursively on the keys of ``expected``; lists match element-wise
    and must have the same length; a callable in ``expected`` is a predicate on the
    actual value; anything else compares with ``==``.
    """
    if callable(expected):
        return bool(expected(actual))
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and subset_match(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(subset_match(e, a) for e, a in zip(expected, actual))
        )
    return bool(expected == actual)


def payload_matches(pattern: PayloadPattern, payload: Any) -> bool:
    return pattern is None or subset_match(pattern, payload)
