"""``twin certs``: list, import, import-cp, export, csr, with the station stopped."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.conftest import PYTHON, twin_process_env
from tests.security.private_ca import CLIENT_AUTH, NOW, SERVER_AUTH, ec_key, key_pem, make_root, pem
from twin.cli import main
from twin.security import pki
from twin.security.certs import CertificateStore
from twin.security.log import SecurityLog
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS
from twin.security.pki import MANUFACTURER_ROOT as MF


@pytest.fixture
def data(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


def run(*argv: str | Path) -> int:
    return main(["certs", *map(str, argv)])


def listing(data: Path, capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()
    assert run("list", "--data-dir", data, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_import_list_export_roots(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cs, mf = make_root("CSMS root"), make_root("MF root")
    (tmp_path / "cs.pem").write_text(cs.pem.replace("\n", "\r\n"))  # CRLF, as OCTT writes PEM
    (tmp_path / "mf.pem").write_text(mf.pem)
    assert run("import", "--data-dir", data, "--type", CS, tmp_path / "cs.pem") == 0
    assert run("import", "--data-dir", data, "--type", MF, tmp_path / "mf.pem") == 0
    snap = listing(data, capsys)
    [entry] = snap["installedCertificates"][CS]
    assert entry["hashData"] == pki.hash_data(cs.cert, cs.cert) and entry["subject"] == "CN=CSMS root,O=TestCPO"
    assert [e["subject"] for e in snap["installedCertificates"][MF]] == ["CN=MF root,O=TestCPO"]
    # The station would see them (the same store), and the change is in the security log.
    assert CertificateStore(data).roots(CS) == [cs.cert]
    assert [e["type"] for e in SecurityLog(data).entries()] == ["ReconfigurationOfSecurityParameters"] * 2
    # Human output names both types.
    assert run("list", "--data-dir", data) == 0
    text = capsys.readouterr().out
    assert "CentralSystemRootCertificate: 1" in text and entry["hashData"]["issuerKeyHash"] in text
    assert run("export", "--data-dir", data, "--type", CS, "--out", tmp_path / "out") == 0
    [written] = list((tmp_path / "out").iterdir())
    assert x509.load_pem_x509_certificate(written.read_bytes()) == cs.cert


def test_import_refuses_what_install_certificate_refuses(data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    root = make_root()
    _key, leaf = root.leaf("localhost", SERVER_AUTH)
    cases = {
        "leaf.pem": (pem(leaf), 1, "CA"),
        "key.pem": (key_pem(ec_key()).decode(), 1, "no PEM certificate"),
        "binary.der": (None, 2, "PEM is ASCII"),
    }
    for name, (content, status, message) in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(b"\x30\x82\x01\xff" + bytes(range(200)))
        else:
            path.write_text(content)
        capsys.readouterr()
        assert run("import", "--data-dir", data, "--type", CS, path) == status, name
        assert message in capsys.readouterr().err, name
    assert run("import", "--data-dir", data, "--type", CS, tmp_path / "missing.pem") == 2
    assert "no such file" in capsys.readouterr().err
    assert run("import", "--data-dir", tmp_path / "nowhere", "--type", CS, tmp_path / "leaf.pem") == 2
    assert "no such data dir" in capsys.readouterr().err
    assert CertificateStore(data).roots(CS) == []


def test_import_respects_max_length(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for i in range(2):
        (tmp_path / f"{i}.pem").write_text(make_root(f"R{i}").pem)
    assert run("import", "--data-dir", data, "--type", CS, "--max-length", "1", tmp_path / "0.pem") == 0
    assert run("import", "--data-dir", data, "--type", MF, "--max-length", "1", tmp_path / "1.pem") == 1
    assert "store is full" in capsys.readouterr().err


def test_import_cp_with_a_key_and_export_never_writes_keys(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    root = make_root("Lab CA")
    sub = root.sub_ca("Lab sub-CA")
    key, leaf = sub.leaf("XJ-0001", CLIENT_AUTH, o="Lab CPO")
    (tmp_path / "chain.pem").write_text(pem(leaf) + pem(sub.cert))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "other.key").write_bytes(key_pem(ec_key()))
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "chain.pem", "--key", tmp_path / "other.key") == 1
    assert "does not belong" in capsys.readouterr().err
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "chain.pem", "--key", tmp_path / "key.pem") == 0
    assert "active from the next connection" in capsys.readouterr().out
    credentials = CertificateStore(data).charge_point_credentials(NOW)
    assert credentials is not None and credentials.certificate == leaf
    [entry] = listing(data, capsys)["chargePointCertificates"]
    assert entry["state"] == "active" and entry["serialNumber"] == format(leaf.serial_number, "x")
    assert run("export", "--data-dir", data, "--type", "ChargePointCertificate", "--out", tmp_path / "out") == 0
    [written] = list((tmp_path / "out").iterdir())
    text = written.read_text()
    assert "PRIVATE KEY" not in text
    assert pki.load_certificates(text) == [leaf, sub.cert]


def test_import_cp_refuses_a_ca_or_expired_certificate(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    root = make_root()
    (tmp_path / "root.pem").write_text(root.pem)
    (tmp_path / "root.key").write_bytes(key_pem(root.key))
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "root.pem", "--key", tmp_path / "root.key") == 1
    assert "CA certificate" in capsys.readouterr().err
    from datetime import timedelta

    key, old = root.leaf("XJ-0001", CLIENT_AUTH, start=timedelta(days=-10), days=5)
    (tmp_path / "old.pem").write_text(pem(old))
    (tmp_path / "old.key").write_bytes(key_pem(key))
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "old.pem", "--key", tmp_path / "old.key") == 1
    assert "expired" in capsys.readouterr().err
    assert CertificateStore(data).all_charge_point_credentials() == []


def test_offline_provisioning_csr_then_import_cp(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "none.pem") == 2  # no file
    out = tmp_path / "station.csr"
    assert run("csr", "--data-dir", data, "--cpo-name", "Lab CPO", "--cn", "XJ-0001", "--out", out) == 0
    request = x509.load_pem_x509_csr(out.read_bytes())
    assert request.is_signature_valid
    assert request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Lab CPO"
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "XJ-0001"
    assert b"PRIVATE" not in out.read_bytes()
    assert listing(data, capsys)["pendingCsr"] is True
    root = make_root("Lab CA")
    # A certificate for another key is refused; the one for the CSR's key is taken.
    _other, wrong = root.leaf("XJ-0001", CLIENT_AUTH, o="Lab CPO")
    (tmp_path / "wrong.pem").write_text(pem(wrong))
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "wrong.pem") == 1
    assert "not for the key of the last CSR" in capsys.readouterr().err
    signed = root.issue(request.subject, request.public_key(), CLIENT_AUTH)
    (tmp_path / "signed.pem").write_text(pem(signed))
    assert run("import-cp", "--data-dir", data, "--chain", tmp_path / "signed.pem") == 0
    snap = listing(data, capsys)
    assert snap["pendingCsr"] is False and snap["chargePointCertificates"][0]["state"] == "active"
    assert run("csr", "--data-dir", data, "--cpo-name", "", "--cn", "X", "--out", out) == 2
    assert "must be set" in capsys.readouterr().err
    assert run("csr", "--data-dir", data, "--cpo-name", "Lab", "--cn", "X", "--rsa", "1024", "--out", out) == 2
    assert "at least 2048" in capsys.readouterr().err


def test_as_a_process_and_on_a_full_disk(data: Path, tmp_path: Path) -> None:
    """``python -m twin certs`` in a process whose file writes are capped (RLIMIT_FSIZE: the
    kernel refuses the write with EFBIG, as a full disk refuses it with ENOSPC)."""
    root = make_root("CSMS root")
    (tmp_path / "cs.pem").write_text(root.pem)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    cmd = [PYTHON, "-m", "twin", "certs", "import", "--data-dir", str(data), "--type", CS, str(tmp_path / "cs.pem")]
    proc = subprocess.run(cmd, env=twin_process_env(), capture_output=True, text=True, timeout=60, preexec_fn=cap)
    assert proc.returncode == 1, proc.stderr
    assert "could not store the certificate" in proc.stderr and "Traceback" not in proc.stderr
    assert CertificateStore(data).roots(CS) == []
    assert not [p for p in (data / "certs").rglob("*") if p.is_file()]  # no temp file left behind
    proc = subprocess.run(cmd, env=twin_process_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([PYTHON, "-m", "twin", "certs", "list", "--data-dir", str(data), "--json"],
                          env=twin_process_env(), capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout)["installedCertificates"][CS][0]["subject"] == "CN=CSMS root,O=TestCPO"
    assert os.stat(data / "certs").st_mode & 0o777 == 0o700
