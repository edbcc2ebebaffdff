"""docs/security-walkthrough.md, step by step, against the built-in CSMS: one CSMS per
security profile (A00.FR.006), the real station runtime with [csms.profile_urls].

Profile 1 -> InstallCertificate(CentralSystemRootCertificate) -> a first try of profile 2
against a CSMS with a foreign certificate (falls back to 1, InvalidCentralSystemCertificate)
-> profile 2 -> a new AuthorizationKey (refused once: fallback to the old one) ->
ExtendedTriggerMessage(SignChargePointCertificate) -> SignCertificate -> CertificateSigned ->
profile 3 -> downgrade Rejected -> certificate renewal on profile 3 -> DeleteCertificate of
the root in use (Failed) -> GetLog(SecurityLog)."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port
from twin.csms import Csms
from twin.csms.pki import CsmsPki

HEX_KEY = "00112233445566778899AABBCCDDEEFF0A0B0C0D"
NEW_KEY = "a-new-plain-key-42"  # 18 characters of text: sent as they are
SERIAL = "SN-WALK-1"
CPO = "Walkthrough CPO"


class _Uploads(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def station_toml(p1: Csms, p2_url: str, p3_url: str) -> str:
    return f"""
[station]
charge_point_id = "CP1"
[csms]
url = "{p1.url}"
password = "{HEX_KEY}"
[csms.profile_urls]
2 = "{p2_url}"
3 = "{p3_url}"
[identity]
chargePointSerialNumber = "{SERIAL}"
[keys]
CpoName = "{CPO}"
SecurityProfile = 1
"""


async def test_profiles_1_2_3_against_one_csms_per_profile(tmp_path: Path) -> None:
    from twin.config import load_config
    from twin.runtime import Runtime

    pki = CsmsPki(tmp_path / "pki").ensure()
    rogue = CsmsPki(tmp_path / "rogue").ensure()
    p2_port, p3_port = free_port(), free_port()
    p1 = Csms.for_profile(1, authorization_key=HEX_KEY, heartbeat_interval=300)
    fake2 = Csms.for_profile(2, pki=rogue, authorization_key=HEX_KEY, port=p2_port)
    p3 = Csms.for_profile(3, pki=pki, port=p3_port, heartbeat_interval=300)
    uploads = ThreadingHTTPServer(("127.0.0.1", 0), _Uploads)
    threading.Thread(target=uploads.serve_forever, daemon=True).start()
    p2: Csms | None = None
    rt = None
    try:
        for server in (p1, fake2, p3):
            await server.start()
        config = tmp_path / "station.toml"
        config.write_text(station_toml(p1, f"wss://localhost:{p2_port}", f"wss://localhost:{p3_port}"))
        rt = Runtime(load_config(config, {"data_dir": tmp_path / "data", "control": "127.0.0.1:0", "sim": True}))
        await rt.start()

        # Profile 1: HTTP Basic with the decoded 20-byte key.
        await p1.wait_for("BootNotification", timeout=15)
        assert p1.last_handshake.profile == 1 and p1.last_handshake.auth_user == "CP1"
        await p1.wait_for("SecurityEventNotification", {"type": "StartupOfTheDevice"}, timeout=10)

        # Prerequisite of profile 2 (A05.FR.03): without a root the raise is Rejected.
        assert (await p1.change_configuration("SecurityProfile", "2"))["status"] == "Rejected"
        assert (await p1.install_certificate("CentralSystemRootCertificate", pki.csms_root_pem()))["status"] == "Accepted"
        ids = await p1.get_installed_certificate_ids("CentralSystemRootCertificate")
        assert ids["status"] == "Accepted" and len(ids["certificateHashData"]) == 1

        # A profile 2 endpoint whose certificate the installed root does not sign: the
        # station falls back to profile 1 (A05.FR.08) and reports the CSMS certificate.
        connections = p1.connection_count
        assert (await p1.change_configuration("SecurityProfile", "2"))["status"] == "Accepted"
        await p1.wait_connected(timeout=30, after=connections)
        await p1.wait_for("SecurityEventNotification", {"type": "InvalidCentralSystemCertificate"}, timeout=15)
        assert fake2.connection_count == 0 and p1.last_handshake.profile == 1

        # The real profile 2 endpoint.
        await fake2.stop()
        p2 = Csms.for_profile(2, pki=pki, authorization_key=HEX_KEY, port=p2_port, heartbeat_interval=300)
        await p2.start()
        assert (await p1.change_configuration("SecurityProfile", "2"))["status"] == "Accepted"
        await p2.wait_connected(timeout=30)
        assert p2.last_handshake.profile == 2 and p2.last_handshake.tls_version in ("TLSv1.2", "TLSv1.3")
        assert not p2.calls("BootNotification")  # the registration stands across the reconnect

        # A01: a new AuthorizationKey. The CSMS refuses it first: the station comes back with the old one.
        connections = p2.connection_count
        assert (await p2.change_configuration("AuthorizationKey", NEW_KEY))["status"] == "Accepted"
        await p2.wait_connected(timeout=30, after=connections)
        assert [h.refused is not None for h in p2.handshakes[-2:]] == [True, False]
        # Now the CSMS expects it (set before the change, so the reconnect meets it).
        p2.require_password = NEW_KEY
        connections = p2.connection_count
        assert (await p2.change_configuration("AuthorizationKey", NEW_KEY))["status"] == "Accepted"
        await p2.wait_connected(timeout=30, after=connections)
        assert p2.handshakes[-1].refused is None and p2.handshakes[-1].auth_user == "CP1"

        # A02: the CSMS asks for a CSR, signs it, sends CertificateSigned.
        assert (await p2.extended_trigger_message("SignChargePointCertificate"))["status"] == "Accepted"
        csr = await p2.wait_for("SignCertificate", timeout=10)
        assert csr.payload["csr"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
        await p2.wait_until(lambda: p2.certificate_signed_results or None, 10, "CertificateSigned")
        assert p2.certificate_signed_results[0][1] == {"status": "Accepted"}

        # Profile 3 with that certificate; no lower profile afterwards (A05.FR.01, A05.FR.09).
        assert (await p2.change_configuration("SecurityProfile", "3"))["status"] == "Accepted"
        await p3.wait_connected(timeout=30)
        assert p3.last_handshake.profile == 3
        assert p3.last_handshake.client_subject == f"CN={SERIAL},O={CPO}"
        assert (await p3.change_configuration("SecurityProfile", "2"))["status"] == "Rejected"
        assert not p3.calls("BootNotification")
        # A02 on profile 3 (TC_074): a renewed certificate is presented after a reconnect.
        first_cert, connections = p3.last_handshake.client_certificate, p3.connection_count
        assert (await p3.extended_trigger_message("SignChargePointCertificate"))["status"] == "Accepted"
        await p3.wait_until(lambda: p3.certificate_signed_results or None, 10, "CertificateSigned")
        assert p3.certificate_signed_results[0][1] == {"status": "Accepted"}
        await p3.wait_connected(timeout=30, after=connections)
        assert p3.last_handshake.client_certificate != first_cert
        assert p3.last_handshake.client_subject == f"CN={SERIAL},O={CPO}"
        # M04.FR.06: the root that validates the live connection cannot be deleted.
        [root_id] = (await p3.get_installed_certificate_ids("CentralSystemRootCertificate"))["certificateHashData"]
        assert (await p3.delete_certificate(root_id))["status"] == "Failed"

        # N01: the security log, uploaded where GetLog says.
        url = f"http://127.0.0.1:{uploads.server_address[1]}/logs/"
        conf = await p3.get_log(url, request_id=77)
        assert conf["status"] == "Accepted" and conf["filename"]
        await p3.wait_for("LogStatusNotification", {"status": "Uploading", "requestId": 77}, timeout=10)
        await p3.wait_for("LogStatusNotification", {"status": "Uploaded", "requestId": 77}, timeout=15)
        path, body = _Uploads.received[-1]
        assert path == f"/logs/{conf['filename']}"
        text = body.decode("utf-8", errors="replace")
        for event in ("StartupOfTheDevice", "InvalidCentralSystemCertificate", "ReconfigurationOfSecurityParameters",
                      "FailedToAuthenticationAtCentralSystem"):
            assert event in text
        assert HEX_KEY not in text and NEW_KEY not in text
        for server in (p1, p2, p3):
            assert server.schema_errors == [], server.schema_errors
    finally:
        if rt is not None:
            await rt.shutdown(graceful=False)
        for server in (p1, fake2, p3, p2):
            if server is not None:
                await server.stop()
        uploads.shutdown()
        await asyncio.sleep(0)
