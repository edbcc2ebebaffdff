"""Card presentations -> taps. Pure (``now`` is a monotonic float passed in).

A card held on the reader is one tap (issue 6). Beyond that, RF readers flicker: a card at
the edge of the field, or a pcscd restart, reports removed + inserted within a fraction of a
second. The same UID coming back within ``debounce_s`` of leaving is the same presentation.
A *different* card is always a new tap.

Losing the PC/SC context (pcscd restart, reader unplugged) changes nothing here: a card
that was on the reader stays "present" until a fresh context sees the reader empty, so a
card held through a pcscd restart is still one tap.
"""

from __future__ import annotations

from drivers.sim import ID_TAG_MAX_LEN

DEFAULT_DEBOUNCE_S = 1.0


def uid_to_id_tag(uid: bytes) -> str:
    """UID bytes -> OCPP idTag: uppercase hex, at most 20 chars (CiString20, spec 7.28).

    ISO 14443 UIDs are 4, 7 or 10 bytes (8/14/20 hex chars), so this never truncates a
    standard UID; anything longer keeps its first 10 bytes.
    """
    if not uid:
        raise ValueError("empty UID")
    return uid.hex().upper()[:ID_TAG_MAX_LEN]


class TapDebouncer:
    def __init__(self, debounce_s: float = DEFAULT_DEBOUNCE_S) -> None:
        self.debounce_s = debounce_s
        self._present: dict[str, str] = {}  # reader -> idTag on it now
        self._left: dict[str, tuple[str, float]] = {}  # reader -> (idTag, when it left)

    @property
    def cards(self) -> dict[str, str]:
        """reader -> idTag of the card on it now."""
        return dict(self._present)

    def card_present(self, reader: str, id_tag: str, now: float) -> bool:
        """A card was detected on ``reader``; True when this is a new tap."""
        if self._present.get(reader) == id_tag:
            return False  # still the same presentation (repeated event)
        self._present[reader] = id_tag
        left = self._left.pop(reader, None)
        if left is not None and left[0] == id_tag and now - left[1] < self.debounce_s:
            return False  # came back within the debounce window: flicker, not a new tap
        return True

    def card_removed(self, reader: str, now: float) -> None:
        tag = self._present.pop(reader, None)
        if tag is not None:
            self._left[reader] = (tag, now)
