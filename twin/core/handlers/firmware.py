"""Firmware Management profile (§5.9 GetDiagnostics, §5.19 UpdateFirmware) and its secure
counterparts of the security whitepaper (L01 SignedUpdateFirmware, N01 GetLog): the
firmware adapter (twin.firmware) answers these calls, so the core hands them over."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Delegate
from twin.core.ports import DELEGATE, StationShape


def update_firmware(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


def get_diagnostics(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


def signed_update_firmware(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


def get_log(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


HANDLERS = {"UpdateFirmware": update_firmware, "GetDiagnostics": get_diagnostics,
            "SignedUpdateFirmware": signed_update_firmware, "GetLog": get_log}
