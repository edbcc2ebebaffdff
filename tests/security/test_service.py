"""The certificate service (twin.security.service) on a real CertificateStore in tmp_path,
a private CA and the real station core (tests/core/harness.py drives it with the test's
clock). The link is a recorder: these tests are about what the service answers and what
it tells the core; tests/octt/test_security_certificates.py runs the same over a real
websocket."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from tests.core.harness import Harness
from tests.security.private_ca import CLIENT_AUTH, NOW, SERVER_AUTH, key_pem, make_root, pem, validate
from twin.core import actions as A
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS
from twin.security.pki import MANUFACTURER_ROOT as MF
from twin.security.service import SecurityService, SecuritySettings

CPO = "TestCPO"
SERIAL = "XJ-0001"


class RecordingLink:
    """The link's surface the service uses; every reply is checked against the schema."""

    def __init__(self, url: str = "ws://127.0.0.1:9/ocpp/CP1", peer: list[bytes] | None | str = "absent"):
        self.url = url
        self.connected = True
        self.replies: list[tuple[str, dict]] = []
        self.actions: dict[str, str] = {}
        if peer != "absent":
            self.peer_certificates = lambda: peer

    def reply(self, uid: str, payload: dict) -> None:
        validate(self.actions[uid], payload, response=True)
        self.replies.append((uid, payload))

    def reply_error(self, uid: str, code: str, description: str, details: dict | None = None) -> None:
        self.replies.append((uid, {"error": code, "description": description}))


class CoreActor:
    """Runs a core event with the harness clock and executes its effects, as the actor does."""

    def __init__(self, h: Harness):
        self.h = h
        self.control: list = []

    async def call(self, fn, *args):
        effects = fn(*args, self.h.now)
        self.control += [a for a in effects if isinstance(a, (A.SecurityLogEntry, A.Reconnect, A.SecurityTask))]
        self.h.run(effects)
        return effects


class Rig:
    def __init__(self, tmp_path: Path, keys: dict | None = None, link: RecordingLink | None = None,
                 settings: SecuritySettings | None = None, identity: dict | None = None, boot: bool = True):
        self.h = Harness(keys={"CpoName": CPO, "SecurityProfile": "1", **(keys or {})}, now=NOW)
        if boot:
            self.h.boot()
        self.actor = CoreActor(self.h)
        self.link = link or RecordingLink()
        self.reconnects: list[str] = []
        self.rt = SimpleNamespace(station=self.h.st, actor=self.actor, link=self.link, clock=lambda: self.h.now,
                                  cfg=SimpleNamespace(charge_point_id="CP1", identity=identity or {}),
                                  _reconnect=self.reconnects.append)
        self.store = CertificateStore(tmp_path / "data")
        self.svc = SecurityService(self.rt, self.store,
                                   settings or SecuritySettings(reconnect_delay_s=0.01, renew_check_s=3600))
        self.n = 0

    async def call(self, action: str, payload: dict) -> dict:
        validate(action, payload, response=False)
        self.n += 1
        uid = f"u{self.n}"
        self.link.actions[uid] = action
        await self.svc.handle(A.Delegate(uid, action, payload))
        [answer] = [p for u, p in self.link.replies if u == uid]
        return answer

    def logged(self, name: str) -> list[A.SecurityLogEntry]:
        return [a for a in self.actor.control if isinstance(a, A.SecurityLogEntry) and a.name == name]

    def sent(self, action: str) -> list[A.Send]:
        return [s for s in self.h.sent if s.action == action]

    @property
    def facts(self):
        return self.h.st.security.facts


def sign_csr(ca, csr_pem: str, **kw) -> x509.Certificate:
    """The CSMS's CA (the test) signs the CSR it got."""
    request = x509.load_pem_x509_csr(csr_pem.encode())
    assert request.is_signature_valid
    return ca.issue(request.subject, request.public_key(), CLIENT_AUTH, **kw)


def oracle_hash(cert: x509.Certificate) -> dict:
    """CertificateHashData computed here, apart from the station's code."""
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, cert, hashes.SHA256()).build()
    return {"hashAlgorithm": "SHA256", "issuerNameHash": req.issuer_name_hash.hex(),
            "issuerKeyHash": req.issuer_key_hash.hex(), "serialNumber": format(req.serial_number, "x")}


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path)
    await r.svc.start(renewal=False)
    yield r
    await r.svc.close()


# ---------------------------------------------------------------- InstallCertificate / Get / Delete
async def test_start_tells_the_core_what_the_store_holds(tmp_path: Path) -> None:
    store = CertificateStore(tmp_path / "data")
    store.install_root(CS, make_root("A").pem, NOW, 20)
    store.install_root(MF, make_root("M").pem, NOW, 20)
    root = make_root("CPO")
    key, leaf = root.leaf(SERIAL, CLIENT_AUTH, o=CPO)
    store.import_charge_point_credentials(pem(leaf), key_pem(key))
    r = Rig(tmp_path)
    assert r.facts.central_system_roots == 0
    await r.svc.start(renewal=False)
    assert (r.facts.central_system_roots, r.facts.manufacturer_roots, r.facts.charge_point_certificate) == (1, 1, True)


async def test_install_list_delete_and_the_facts_and_events(rig: Rig) -> None:
    root = make_root("CSMS root")
    assert (await rig.call("GetInstalledCertificateIds", {"certificateType": CS})) == {"status": "NotFound"}
    assert (await rig.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem}))["status"] == "Accepted"
    assert rig.facts.central_system_roots == 1 and rig.facts.manufacturer_roots == 0
    [entry] = rig.logged("ReconfigurationOfSecurityParameters")
    assert "CentralSystemRootCertificate" in entry.tech_info
    listed = await rig.call("GetInstalledCertificateIds", {"certificateType": CS})
    assert listed == {"status": "Accepted", "certificateHashData": [oracle_hash(root.cert)]}
    assert (await rig.call("GetInstalledCertificateIds", {"certificateType": MF})) == {"status": "NotFound"}
    # Installing the same root again changes nothing and raises nothing.
    assert (await rig.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem}))["status"] == "Accepted"
    assert len(rig.logged("ReconfigurationOfSecurityParameters")) == 1

    deleted = await rig.call("DeleteCertificate", {"certificateHashData": oracle_hash(root.cert)})
    assert deleted == {"status": "Accepted"}
    assert rig.facts.central_system_roots == 0
    assert len(rig.logged("ReconfigurationOfSecurityParameters")) == 2
    assert (await rig.call("DeleteCertificate", {"certificateHashData": oracle_hash(root.cert)})) == {"status": "NotFound"}
    assert (await rig.call("GetInstalledCertificateIds", {"certificateType": CS})) == {"status": "NotFound"}
    # ReconfigurationOfSecurityParameters is log-only: nothing went to the CSMS.
    assert not [s for s in rig.sent("SecurityEventNotification")
                if s.payload["type"] == "ReconfigurationOfSecurityParameters"]


async def test_install_rejections(rig: Rig) -> None:
    root = make_root()
    _key, leaf = root.leaf("leaf", SERVER_AUTH)
    for bad in (pem(leaf), "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
                root.pem + root.pem, make_root(days=1, start=timedelta(days=-2)).pem):
        answer = await rig.call("InstallCertificate", {"certificateType": MF, "certificate": bad})
        assert answer == {"status": "Rejected"}
    assert rig.facts.manufacturer_roots == 0 and not rig.logged("ReconfigurationOfSecurityParameters")


async def test_install_beyond_certificate_store_max_length_is_rejected(tmp_path: Path) -> None:
    r = Rig(tmp_path, keys={"CertificateStoreMaxLength": "2"})
    await r.svc.start(renewal=False)
    for use, cn in ((MF, "R1"), (CS, "R2")):  # both types count (WP3 §7: "Root/CA certificates installed")
        assert (await r.call("InstallCertificate", {"certificateType": use, "certificate": make_root(cn).pem}))[
            "status"] == "Accepted"
    answer = await r.call("InstallCertificate", {"certificateType": CS, "certificate": make_root("one more").pem})
    assert answer == {"status": "Rejected"}
    assert r.facts.central_system_roots == 1


async def test_certificate_signed_max_chain_size_is_the_keys(tmp_path: Path) -> None:
    r = Rig(tmp_path, keys={"CertificateSignedMaxChainSize": "400"})
    await r.svc.start(renewal=False)
    root = make_root("CPO root")
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    await r.svc.task("SignCertificate")
    leaf = sign_csr(root, r.sent("SignCertificate")[0].payload["csr"])
    assert len(pem(leaf)) > 400
    assert (await r.call("CertificateSigned", {"certificateChain": pem(leaf)})) == {"status": "Rejected"}
    [entry] = r.logged("InvalidChargePointCertificate")
    assert "CertificateSignedMaxChainSize 400" in entry.tech_info


async def test_a_store_that_cannot_be_written_answers_failed_and_keeps_running(rig: Rig,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    # A file where the directory must be: every write into it fails (ENOTDIR), as on a broken disk.
    rig.store.root.mkdir(parents=True, exist_ok=True)
    (rig.store.root / MF).write_text("in the way")
    with caplog.at_level(logging.ERROR, logger="twin.security"):
        answer = await rig.call("InstallCertificate", {"certificateType": MF, "certificate": make_root().pem})
    assert answer == {"status": "Failed"}
    assert any("InstallCertificate" in r.getMessage() and "Failed" in r.getMessage() for r in caplog.records)
    assert rig.facts.manufacturer_roots == 0
    # The service still answers the rest.
    good = make_root("CS")
    assert (await rig.call("InstallCertificate", {"certificateType": CS, "certificate": good.pem}))["status"] == "Accepted"


async def test_delete_refuses_the_root_of_the_live_tls_connection(tmp_path: Path) -> None:
    in_use, spare = make_root("In use"), make_root("Spare")
    _key, server = in_use.leaf("localhost", SERVER_AUTH)
    link = RecordingLink("wss://localhost:9/ocpp/CP1", peer=[server.public_bytes(serialization.Encoding.DER)])
    r = Rig(tmp_path, keys={"SecurityProfile": "2"}, link=link)
    await r.svc.start(renewal=False)
    for root in (in_use, spare):
        await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(in_use.cert)})) == {"status": "Failed"}
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(spare.cert)})) == {"status": "Accepted"}
    # Offline nothing validates a connection: the last root may go (M04 remarks).
    link.connected = False
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(in_use.cert)})) == {"status": "Accepted"}


async def test_delete_without_the_peer_chain_counts_every_root_as_in_use_on_tls(tmp_path: Path) -> None:
    # A link that cannot show the server chain: while connected over TLS every
    # CentralSystemRootCertificate may be the anchor, so none is deleted (M04.FR.06).
    cs, mf = make_root("CS"), make_root("MF")
    r = Rig(tmp_path, keys={"SecurityProfile": "2"}, link=RecordingLink("wss://localhost:9/ocpp/CP1"))
    await r.svc.start(renewal=False)
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": cs.pem})
    await r.call("InstallCertificate", {"certificateType": MF, "certificate": mf.pem})
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(cs.cert)})) == {"status": "Failed"}
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(mf.cert)})) == {"status": "Accepted"}
    assert r.store.roots(CS) == [cs.cert] and r.store.roots(MF) == []


async def test_the_peer_chain_is_not_needed_on_a_plain_connection(tmp_path: Path) -> None:
    root = make_root()
    r = Rig(tmp_path, keys={"SecurityProfile": "1"}, link=RecordingLink("ws://127.0.0.1:9/ocpp/CP1", peer=None))
    await r.svc.start(renewal=False)
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    assert (await r.call("DeleteCertificate", {"certificateHashData": oracle_hash(root.cert)})) == {"status": "Accepted"}


# ---------------------------------------------------------------- SignCertificate / CertificateSigned
async def test_sign_certificate_task_sends_a_csr_with_cpo_name_and_serial(tmp_path: Path) -> None:
    r = Rig(tmp_path, identity={"chargePointSerialNumber": SERIAL})
    await r.svc.start(renewal=False)
    await r.svc.task("SignCertificate")
    [send] = r.sent("SignCertificate")
    validate("SignCertificate", send.payload, response=False)
    request = x509.load_pem_x509_csr(send.payload["csr"].encode())
    assert request.is_signature_valid
    assert request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CPO
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERIAL
    assert isinstance(request.public_key(), ec.EllipticCurvePublicKey)
    assert r.svc.snapshot()["pendingCsr"] is True
    # A second request is a new key pair (A02.FR.02).
    await r.svc.task("SignCertificate")
    second = x509.load_pem_x509_csr(r.sent("SignCertificate")[1].payload["csr"].encode())
    assert second.public_key().public_numbers() != request.public_key().public_numbers()


async def test_the_cn_falls_back_to_the_identity_and_can_be_configured(tmp_path: Path) -> None:
    r = Rig(tmp_path / "a")
    assert r.svc.certificate_cn() == "CP1"
    r = Rig(tmp_path / "b", identity={"chargePointSerialNumber": SERIAL},
            settings=SecuritySettings(certificate_cn="lab-unit-7", key_algorithm="rsa", rsa_bits=2048))
    await r.svc.start(renewal=False)
    csr = await r.svc.request_certificate("test")
    request = x509.load_pem_x509_csr(csr.encode())
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lab-unit-7"
    assert isinstance(request.public_key(), rsa.RSAPublicKey) and request.public_key().key_size == 2048


def test_settings_from_the_security_table() -> None:
    s = SecuritySettings.from_table({"certificate_cn": "X", "key_algorithm": "rsa", "rsa_bits": 3072, "other": 1})
    assert (s.certificate_cn, s.key_algorithm, s.rsa_bits) == ("X", "rsa", 3072)
    for bad, where in (({"key_algorithm": "dsa"}, "key_algorithm"), ({"rsa_bits": 1024}, "rsa_bits"),
                       ({"rsa_bits": True}, "rsa_bits"), ({"certificate_cn": 7}, "certificate_cn"),
                       ({"certificate_cn": "x" * 65}, "certificate_cn")):
        with pytest.raises(ValueError, match=f"security.{where}"):
            SecuritySettings.from_table(bad)
    with pytest.raises(ValueError, match="security.other"):
        SecuritySettings.from_table({"other": 1}, strict=True)
    assert SecuritySettings.from_config(SimpleNamespace()) == SecuritySettings()


async def test_no_csr_without_cpo_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = Rig(tmp_path, keys={"CpoName": ""})
    await r.svc.start(renewal=False)
    with caplog.at_level(logging.WARNING, logger="twin.security"):
        assert await r.svc.request_certificate("test") is None
    assert not r.sent("SignCertificate") and "CpoName" in caplog.text


async def test_certificate_signed_accepted_under_profile_3_reconnects(tmp_path: Path) -> None:
    r = Rig(tmp_path, keys={"SecurityProfile": "3"}, identity={"chargePointSerialNumber": SERIAL})
    await r.svc.start(renewal=False)
    root = make_root("CPO root")
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    await r.svc.task("SignCertificate")
    leaf = sign_csr(root, r.sent("SignCertificate")[0].payload["csr"])
    answer = await r.call("CertificateSigned", {"certificateChain": pem(leaf)})
    assert answer == {"status": "Accepted"}
    credentials = r.store.charge_point_credentials(NOW)
    assert credentials is not None and credentials.certificate == leaf
    assert r.facts.charge_point_certificate
    assert not r.sent("SecurityEventNotification") or all(
        s.payload["type"] != "InvalidChargePointCertificate" for s in r.sent("SecurityEventNotification"))
    snap = r.svc.snapshot()
    assert snap["pendingCsr"] is False
    [cp] = snap["chargePointCertificates"]
    assert cp["state"] == "active" and cp["subject"] == f"CN={SERIAL},O={CPO}"
    await asyncio.wait_for(_until(lambda: r.reconnects), 5)
    assert r.reconnects == ["new charge point certificate"]


async def test_certificate_signed_accepted_under_profile_1_waits_for_an_upgrade(tmp_path: Path) -> None:
    r = Rig(tmp_path, keys={"SecurityProfile": "1"})
    await r.svc.start(renewal=False)
    root = make_root("CPO root")
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    await r.svc.task("SignCertificate")
    leaf = sign_csr(root, r.sent("SignCertificate")[0].payload["csr"])
    assert (await r.call("CertificateSigned", {"certificateChain": pem(leaf)})) == {"status": "Accepted"}
    await asyncio.sleep(0.05)
    assert r.reconnects == [] and r.facts.charge_point_certificate


async def test_invalid_certificate_signed_is_rejected_and_sends_the_event(tmp_path: Path) -> None:
    r = Rig(tmp_path, keys={"SecurityProfile": "1"})
    await r.svc.start(renewal=False)
    root, rogue = make_root("CPO root"), make_root("Rogue")
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    await r.svc.task("SignCertificate")
    csr = r.sent("SignCertificate")[0].payload["csr"]
    answer = await r.call("CertificateSigned", {"certificateChain": pem(sign_csr(rogue, csr))})
    assert answer == {"status": "Rejected"}
    [event] = [s for s in r.sent("SecurityEventNotification") if s.payload["type"] == "InvalidChargePointCertificate"]
    validate("SecurityEventNotification", event.payload, response=False)
    assert "installed root" in event.payload["techInfo"]
    assert r.store.charge_point_credentials(NOW) is None and not r.facts.charge_point_certificate
    # The pending key stays: a corrected certificate is still taken.
    assert (await r.call("CertificateSigned", {"certificateChain": pem(sign_csr(root, csr))})) == {"status": "Accepted"}


async def test_certificate_signed_with_no_request_is_rejected(rig: Rig) -> None:
    root = make_root()
    _key, leaf = root.leaf(SERIAL, CLIENT_AUTH, o=CPO)
    assert (await rig.call("CertificateSigned", {"certificateChain": pem(leaf)})) == {"status": "Rejected"}
    assert rig.logged("InvalidChargePointCertificate")


# ---------------------------------------------------------------- renewal (A03)
async def test_renewal_within_30_days_at_most_once_a_day(tmp_path: Path) -> None:
    r = Rig(tmp_path, identity={"chargePointSerialNumber": SERIAL})
    root = make_root("CPO root", days=3650)
    key, leaf = root.leaf(SERIAL, CLIENT_AUTH, o=CPO, days=20)
    r.store.import_charge_point_credentials(pem(leaf), key_pem(key))
    await r.svc.start(renewal=False)
    assert await r.svc.renew_if_due() is True
    [send] = r.sent("SignCertificate")
    assert x509.load_pem_x509_csr(send.payload["csr"].encode()).subject == leaf.subject
    r.h.now += timedelta(hours=23)
    assert await r.svc.renew_if_due() is False
    # The once-a-day rule holds across a restart: the pending CSR records when it was made.
    again = SecurityService(r.rt, r.store, SecuritySettings())
    await again.start(renewal=False)
    assert await again.renew_if_due() is False
    r.h.now += timedelta(hours=2)
    assert await again.renew_if_due() is True
    assert len(r.sent("SignCertificate")) == 2


async def test_no_renewal_for_a_certificate_valid_beyond_30_days_or_before_registration(tmp_path: Path) -> None:
    r = Rig(tmp_path, boot=False)
    root = make_root("CPO root", days=3650)
    key, leaf = root.leaf(SERIAL, CLIENT_AUTH, o=CPO, days=45)
    r.store.import_charge_point_credentials(pem(leaf), key_pem(key))
    await r.svc.start(renewal=False)
    assert await r.svc.renew_if_due() is False  # 45 days left
    r.h.now += timedelta(days=16)
    assert await r.svc.renew_if_due() is False  # due, but the CSMS has not accepted the station yet
    r.h.boot()
    assert await r.svc.renew_if_due() is True
    # A renewed certificate (even one that starts later) ends the renewal.
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    renewed = sign_csr(root, r.sent("SignCertificate")[0].payload["csr"], start=timedelta(days=1), days=365)
    assert (await r.call("CertificateSigned", {"certificateChain": pem(renewed)})) == {"status": "Accepted"}
    r.h.now += timedelta(days=2)
    assert await r.svc.renew_if_due() is False
    assert len(r.sent("SignCertificate")) == 1


async def test_no_renewal_without_a_certificate(rig: Rig) -> None:
    assert await rig.svc.renew_if_due() is False
    assert not rig.sent("SignCertificate")


# ---------------------------------------------------------------- snapshot
async def test_snapshot_describes_the_store_without_key_material(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    root, mf = make_root("CSMS root"), make_root("MF root")
    old_key, old = root.leaf(SERIAL, CLIENT_AUTH, o=CPO, start=timedelta(days=-2))
    new_key, new = root.leaf(SERIAL, CLIENT_AUTH, o=CPO, start=timedelta(minutes=-1))
    later_key, later = root.leaf(SERIAL, CLIENT_AUTH, o=CPO, start=timedelta(days=3))
    for k, c in ((old_key, old), (new_key, new), (later_key, later)):
        r.store.import_charge_point_credentials(pem(c), key_pem(k))
    await r.svc.start(renewal=False)
    await r.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem})
    await r.call("InstallCertificate", {"certificateType": MF, "certificate": mf.pem})
    snap = r.svc.snapshot()
    [cs_entry] = snap["installedCertificates"][CS]
    assert cs_entry["hashData"] == oracle_hash(root.cert)
    assert cs_entry["subject"] == "CN=CSMS root,O=TestCPO" and cs_entry["issuer"] == cs_entry["subject"]
    assert cs_entry["notAfter"].endswith("Z")
    assert [e["subject"] for e in snap["installedCertificates"][MF]] == ["CN=MF root,O=TestCPO"]
    states = {e["serialNumber"]: e["state"] for e in snap["chargePointCertificates"]}
    assert states == {format(later.serial_number, "x"): "future", format(new.serial_number, "x"): "active",
                      format(old.serial_number, "x"): "fallback"}
    assert snap["pendingCsr"] is False
    text = json.dumps(snap)
    assert "PRIVATE" not in text and "BEGIN" not in text


async def _until(check, interval: float = 0.01) -> None:
    while not check():
        await asyncio.sleep(interval)
