"""Firmware Management profile (§5.9 GetDiagnostics, §5.19 UpdateFirmware) and its secure
counterparts of the security whitepaper (L01 SignedUpdateFirmware, N01 GetLog): the
firmware adapter (twin.firmware) answers these calls, so the core hands them over."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Delegate
from twin.core.ports import DELEGATE, StationShape


def delegate(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


HANDLERS = dict.fromkeys(("UpdateFirmware", "GetDiagnostics", "SignedUpdateFirmware", "GetLog"), delegate)
