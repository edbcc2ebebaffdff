"""What the pure core asks the adapters to do. The runtime executes them in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Send:
    """Send a CALL to the CSMS. Its outcome comes back to the core tagged with ``ref``."""

    ref: int
    action: str
    payload: dict
    timeout: float = 30.0


@dataclass
class Reply:
    unique_id: str
    payload: dict


@dataclass
class ReplyError:
    unique_id: str
    code: str
    description: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Persist:
    """Durably apply store ops; the runtime awaits it before the actions that follow."""

    ops: list[tuple]


@dataclass
class SetRelay:
    connector_id: int
    closed: bool


@dataclass
class SetPilot:
    connector_id: int
    amps: float | None


@dataclass
class Restart:
    """Restart the station process: "Soft" (after a graceful stop) or "Hard" (at once)."""

    kind: str


@dataclass
class Delegate:
    """A CSMS call the core hands to an adapter (firmware and diagnostics); the adapter replies."""

    unique_id: str
    action: str
    payload: dict


@dataclass
class LinkSetting:
    ping_interval: int


@dataclass
class SecurityLogEntry:
    """Append one security event to the rolling security log (WP3 A04.FR.04)."""

    name: str
    timestamp: datetime
    tech_info: str | None = None


@dataclass
class Reconnect:
    """Drop the websocket and connect again with the current security settings (a raised
    SecurityProfile, a new AuthorizationKey or charge point certificate: A05.FR.06, A01)."""

    reason: str


@dataclass
class SecurityTask:
    """Work for the certificate service, e.g. "SignCertificate": a new key pair and CSR (A02)."""

    kind: str


Control = Restart | LinkSetting | SecurityLogEntry | Reconnect | SecurityTask
Action = Send | Reply | ReplyError | Persist | SetRelay | SetPilot | Delegate | Control
