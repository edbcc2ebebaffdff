"""OCTT 1.6 security cases for certificate management (SUT Charge Point), run with the real
runtime against the loopback CSMS: TC_074 (renew the charge point certificate on request),
TC_075_1 / TC_075_2 (install a ManufacturerRootCertificate / CentralSystemRootCertificate),
TC_076 (delete a certificate), TC_077 (an invalid CertificateSigned raises
InvalidChargePointCertificate).

Whitepaper edition 3 use cases A02, M03, M04, M05. OCTT runs these on profile 2/3; the
cases that do not depend on TLS run here on profile 1 (Basic auth over ws://), the lowest
profile on which security events are sent. TC_074 also runs on profile 3 (TLS with a
client certificate) to see the reconnect with the new certificate.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tests.conftest import StationHandle
from tests.security.private_ca import CLIENT_AUTH, key_pem, make_root, pem, validate
from twin.csms import Csms
from twin.security import csr as csr_mod
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS
from twin.security.pki import MANUFACTURER_ROOT as MF

from tests.octt.security_common import KEY, csms  # noqa: F401 - csms is the fixture
CPO = "OCTT Vendor"
SERIAL = "XJ-IEVQC33-0042"
PROFILE_1 = {"SecurityProfile": "1", "AuthorizationKey": KEY, "CpoName": CPO}


@pytest.fixture
async def station(make_station):
    return await make_station(keys=PROFILE_1, identity={"chargePointSerialNumber": SERIAL})


def oracle_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm = hashes.SHA256()) -> dict:
    """CertificateHashData as OCTT computes it (RFC 6960 CertID), apart from the station's code."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, cert, algorithm).build()
    return {"hashAlgorithm": algorithm.name.upper(), "issuerNameHash": request.issuer_name_hash.hex(),
            "issuerKeyHash": request.issuer_key_hash.hex(), "serialNumber": format(request.serial_number, "x")}


def same(ours: dict, theirs: dict) -> bool:
    """Compared as OCTT does: hex case-insensitively, the serial without leading zeros."""
    return (ours["hashAlgorithm"] == theirs["hashAlgorithm"]
            and ours["issuerNameHash"].lower() == theirs["issuerNameHash"].lower()
            and ours["issuerKeyHash"].lower() == theirs["issuerKeyHash"].lower()
            and ours["serialNumber"].lower().lstrip("0") == theirs["serialNumber"].lower().lstrip("0"))


def sign(ca, csr_pem: str) -> x509.Certificate:
    request = x509.load_pem_x509_csr(csr_pem.encode())
    assert request.is_signature_valid
    return ca.issue(request.subject, request.public_key(), CLIENT_AUTH)


async def request_csr(csms: Csms) -> str:
    """ExtendedTriggerMessage(SignChargePointCertificate) -> Accepted -> SignCertificate.req."""
    mark = csms.mark()
    assert (await csms.call("ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"})) == {
        "status": "Accepted"}
    sign_req = await csms.wait_for("SignCertificate", timeout=10, after=mark)
    conf = next(m for m in csms.messages[mark:] if m.direction == "in" and m.kind == "result"
                and m.action == "ExtendedTriggerMessage")
    assert conf.index < sign_req.index  # the .conf goes out before the request it triggers
    return sign_req.payload["csr"]


def now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- TC_075_1 / TC_075_2
@pytest.mark.parametrize("use", [MF, CS], ids=["TC_075_1", "TC_075_2"])
async def test_tc_075_install_certificate_and_its_hash_data(station: StationHandle, csms: Csms, use: str) -> None:
    root = make_root(f"{use} test root")
    assert (await csms.call("GetInstalledCertificateIds", {"certificateType": use})) == {"status": "NotFound"}
    # OCTT's PEM has CRLF line ends.
    answer = await csms.call("InstallCertificate", {"certificateType": use,
                                                    "certificate": root.pem.replace("\n", "\r\n")})
    assert answer == {"status": "Accepted"}
    listed = await csms.call("GetInstalledCertificateIds", {"certificateType": use})
    assert listed["status"] == "Accepted"
    [entry] = listed["certificateHashData"]
    assert same(entry, oracle_hash(root.cert))
    other = MF if use == CS else CS
    assert (await csms.call("GetInstalledCertificateIds", {"certificateType": other})) == {"status": "NotFound"}
    # The store on disk holds it, and the core knows (SecurityProfile 2 needs a CS root: A05.FR.03).
    assert station.rt.certs.roots(use) == [root.cert]
    facts = station.st.security.facts
    assert (facts.central_system_roots, facts.manufacturer_roots) == ((1, 0) if use == CS else (0, 1))
    # GET /api/state shows it, with the same hash data and no key material.
    state = station.rt.state()["security"]
    [shown] = state["installedCertificates"][use]
    assert same(shown["hashData"], oracle_hash(root.cert)) and shown["subject"] == f"CN={use} test root,O=TestCPO"
    assert "PRIVATE" not in json.dumps(state)


async def test_install_certificate_rejects_a_leaf_and_fails_on_a_broken_store(station: StationHandle,
                                                                             csms: Csms) -> None:
    root = make_root()
    _key, leaf = root.leaf("not a root", CLIENT_AUTH)
    assert (await csms.call("InstallCertificate", {"certificateType": CS, "certificate": pem(leaf)})) == {
        "status": "Rejected"}
    # A store that cannot be written (a file where its directory must be): Failed, and the
    # station carries on.
    station.rt.certs.root.mkdir(parents=True, exist_ok=True)
    (station.rt.certs.root / MF).write_text("in the way")
    assert (await csms.call("InstallCertificate", {"certificateType": MF, "certificate": root.pem})) == {
        "status": "Failed"}
    mark = csms.mark()
    assert (await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})) == {"status": "Accepted"}
    await csms.wait_for("Heartbeat", after=mark)


# --------------------------------------------------------------------------- TC_076
async def test_tc_076_delete_certificate(station: StationHandle, csms: Csms) -> None:
    keep, delete = make_root("Keep"), make_root("Delete", serial=0x0ABC)
    for root in (keep, delete):
        assert (await csms.call("InstallCertificate", {"certificateType": CS, "certificate": root.pem}))[
            "status"] == "Accepted"
    listed = await csms.call("GetInstalledCertificateIds", {"certificateType": CS})
    assert len(listed["certificateHashData"]) == 2
    [target] = [h for h in listed["certificateHashData"] if same(h, oracle_hash(delete.cert))]
    # OCTT may send its own spelling: upper-case hex, a leading zero in the serial, another algorithm.
    request = oracle_hash(delete.cert, hashes.SHA384())
    request = {**request, "issuerNameHash": request["issuerNameHash"].upper(), "serialNumber": "0abc"}
    assert (await csms.call("DeleteCertificate", {"certificateHashData": request})) == {"status": "Accepted"}
    after = await csms.call("GetInstalledCertificateIds", {"certificateType": CS})
    assert after["status"] == "Accepted"
    assert not [h for h in after["certificateHashData"] if same(h, target)]
    assert [h for h in after["certificateHashData"] if same(h, oracle_hash(keep.cert))]
    assert (await csms.call("DeleteCertificate", {"certificateHashData": target})) == {"status": "NotFound"}
    assert station.st.security.facts.central_system_roots == 1


# --------------------------------------------------------------------------- TC_074 / TC_077 on profile 1
async def test_tc_074_renew_the_charge_point_certificate(station: StationHandle, csms: Csms) -> None:
    cpo_ca = make_root("CPO CA")
    assert (await csms.call("InstallCertificate", {"certificateType": CS, "certificate": cpo_ca.pem}))[
        "status"] == "Accepted"
    csr_pem = await request_csr(csms)
    request = x509.load_pem_x509_csr(csr_pem.encode())
    assert request.is_signature_valid
    assert request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CPO
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERIAL
    leaf = sign(cpo_ca, csr_pem)
    # OCTT sends CRLF line ends.
    answer = await csms.call("CertificateSigned", {"certificateChain": pem(leaf).replace("\n", "\r\n")})
    assert answer == {"status": "Accepted"}
    credentials = station.rt.certs.charge_point_credentials(now())
    assert credentials is not None and credentials.certificate == leaf
    assert station.st.security.facts.charge_point_certificate  # profile 3 is now possible (A05.FR.04)
    snap = station.rt.security.snapshot()
    assert snap["pendingCsr"] is False
    assert [c["state"] for c in snap["chargePointCertificates"]] == ["active"]
    # Under profile 1 the certificate waits for an upgrade to 3: no reconnect (under 3 it
    # would come reconnect_delay_s after the .conf).
    connections = csms.connection_count
    await asyncio.sleep(station.rt.security.settings.reconnect_delay_s + 0.5)
    mark = csms.mark()
    assert (await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})) == {"status": "Accepted"}
    await csms.wait_for("Heartbeat", after=mark)
    assert csms.connection_count == connections


async def test_tc_077_invalid_certificate_signed_raises_invalid_charge_point_certificate(
        station: StationHandle, csms: Csms) -> None:
    cpo_ca, rogue = make_root("CPO CA"), make_root("Rogue CA")
    await csms.call("InstallCertificate", {"certificateType": CS, "certificate": cpo_ca.pem})
    csr_pem = await request_csr(csms)
    mark = csms.mark()
    answer = await csms.call("CertificateSigned", {"certificateChain": pem(sign(rogue, csr_pem))})
    assert answer == {"status": "Rejected"}
    event = await csms.wait_for("SecurityEventNotification", {"type": "InvalidChargePointCertificate"},
                                timeout=10, after=mark)
    validate("SecurityEventNotification", event.payload, response=False)
    assert station.rt.certs.charge_point_credentials(now()) is None
    assert not station.st.security.facts.charge_point_certificate
    # The event is in the security log too (A04.FR.04).
    await station.until(lambda: any(e["type"] == "InvalidChargePointCertificate"
                                    for e in station.rt.security_log.entries()), what="the security log entry")


async def test_certificate_signed_garbage_is_rejected(station: StationHandle, csms: Csms) -> None:
    await request_csr(csms)
    mark = csms.mark()
    answer = await csms.call("CertificateSigned", {"certificateChain": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                                       "-----END CERTIFICATE-----\n"})
    assert answer == {"status": "Rejected"}
    await csms.wait_for("SecurityEventNotification", {"type": "InvalidChargePointCertificate"}, after=mark)


# --------------------------------------------------------------------------- TC_074 on profile 3
async def test_tc_074_on_profile_3_reconnects_with_the_new_certificate(tmp_path: Path) -> None:
    pytest.importorskip("twin.csms.pki")
    from twin.config import load_config
    from twin.csms.pki import CsmsPki
    from twin.runtime import Runtime

    pki = CsmsPki(tmp_path / "pki").ensure()
    data = tmp_path / "data"
    data.mkdir()
    # Factory provisioning, as `twin certs import` / `import-cp` do: the CSMS root, and a
    # first charge point pair issued by the CSMS's CA, so profile 3 can connect at all.
    store = CertificateStore(data)
    assert store.install_root(CS, pki.csms_root_pem(), now(), 20).status == "Accepted"
    first_key = csr_mod.generate_key()
    first_chain = pki.sign_csr(csr_mod.build_csr(first_key, SERIAL, CPO))
    store.import_charge_point_credentials(first_chain, key_pem(first_key))
    first = x509.load_pem_x509_certificate(first_chain.encode())

    csms = Csms.for_profile(3, pki=pki, heartbeat_interval=300)
    await csms.start()
    rt = None
    try:
        # A lab unit's station file: profile 3 with the pair already in the store.
        station_toml = tmp_path / "station.toml"
        station_toml.write_text(f"""
[station]
charge_point_id = "CP1"
data_dir = "{data}"
[csms]
url = "{csms.url}"
[control]
port = 0
[identity]
chargePointSerialNumber = "{SERIAL}"
[keys]
SecurityProfile = 3
CpoName = "{CPO}"
""")
        cfg = load_config(station_toml, {"sim": True})
        rt = Runtime(cfg, meter_poll_s=0.2)
        await rt.start()
        handle = StationHandle(rt, csms)
        await handle.until(lambda: rt.station.registration == "Accepted", timeout=15, what="registration")
        assert csms.last_handshake.profile == 3
        assert csms.last_handshake.client_certificate == first.public_bytes(Encoding.DER)
        connections = csms.connection_count
        # The CSMS plays OCTT's CA: it signs the CSR and sends CertificateSigned itself.
        await request_csr(csms)
        await csms.wait_until(lambda: csms.certificate_signed_results or None, timeout=10, what="CertificateSigned")
        [(chain, result)] = csms.certificate_signed_results
        assert result == {"status": "Accepted"}
        new = x509.load_pem_x509_certificate(chain.encode())
        await csms.wait_until(lambda: csms.connection_count > connections or None, timeout=15, what="the reconnect")
        await handle.until(lambda: rt.station.online, timeout=15, what="online again")
        assert csms.last_handshake.profile == 3
        assert csms.last_handshake.client_certificate == new.public_bytes(Encoding.DER)
        assert csms.last_handshake.client_subject == f"CN={SERIAL},O={CPO}"
        # The previous pair stays as a fallback for a month (A02.FR.10).
        states = {c["serialNumber"]: c["state"] for c in rt.security.snapshot()["chargePointCertificates"]}
        assert states == {format(new.serial_number, "x"): "active", format(first.serial_number, "x"): "fallback"}
        assert not csms.schema_errors, csms.schema_errors
    finally:
        if rt is not None:
            await rt.shutdown(graceful=False)
        await csms.stop()
