"""Certificate management of the security whitepaper (edition 3): InstallCertificate (M05),
GetInstalledCertificateIds (M03), DeleteCertificate (M04) and CertificateSigned (A02). The
certificate store is files and X.509 work (twin.security), so the core hands these calls to
the certificate service, which answers them and reports back what changed."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Delegate
from twin.core.ports import DELEGATE, StationShape


def delegate(st: StationShape, p: dict, now: datetime) -> Delegate:
    return DELEGATE


HANDLERS = dict.fromkeys(
    ("InstallCertificate", "GetInstalledCertificateIds", "DeleteCertificate", "CertificateSigned"), delegate)
