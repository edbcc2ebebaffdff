"""`twin firmware ...` through the argparse glue the twin CLI uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import twin
from tests.firmware.conftest import Bundles
from twin.firmware.bundle import bump_version, verify_bundle
from twin.firmware.cli import add_firmware_subcommands, run_firmware_command


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    add_firmware_subcommands(parser.add_subparsers(dest="command"))
    return run_firmware_command(parser.parse_args(argv))


def test_build_defaults_to_the_bumped_version(bundles: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["firmware", "build", "--source", str(bundles.source), "--out", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert verify_bundle(path).version == bump_version(twin.__version__)


def test_verify_install_status(bundles: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["firmware", "verify", str(bundles.good["1.12"])]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.12"
    assert run(["firmware", "install", str(bundles.good["1.12"]), "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert run(["firmware", "status", "--data-dir", str(tmp_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["active"], status["trial"], status["installed_slots"]) == ("1.12", "1.12", ["1.12"])


def test_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"junk")
    assert run(["firmware", "verify", str(junk)]) == 1
    assert "twin firmware verify: junk.tar.gz: not a firmware bundle" in capsys.readouterr().err
    assert run(["firmware", "build", "--version", "x", "--source", str(tmp_path), "--out", str(tmp_path)]) == 1


def test_the_twin_cli_reaches_these_commands(bundles: Bundles, capsys: pytest.CaptureFixture) -> None:
    from twin.cli import main

    assert main(["firmware", "verify", str(bundles.good["1.13"])]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.13"


# -- signed bundles (SignedUpdateFirmware, whitepaper L01) ------------------------------


def _signing_files(tmp_path: Path, cn: str = "MF Root"):
    from tests.security.private_ca import CODE_SIGNING, key_pem, make_root, pem

    root = make_root(cn)
    key, cert = root.leaf("Firmware Signing", CODE_SIGNING, o="XJ Power")
    paths = {"key": tmp_path / f"{cn}-sign.key", "cert": tmp_path / f"{cn}-sign.pem", "root": tmp_path / f"{cn}.pem"}
    paths["key"].write_bytes(key_pem(key))
    paths["cert"].write_text(pem(cert))
    paths["root"].write_text(pem(root.cert))
    return paths


def test_build_sign_writes_what_the_csms_sends_and_verify_checks_it(
        bundles: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from twin.security import firmware_sig

    files = _signing_files(tmp_path)
    assert run(["firmware", "build", "--source", str(bundles.source), "--out", str(tmp_path / "out"),
                "--version", "1.15", "--sign", str(files["key"]), "--cert", str(files["cert"])]) == 0
    printed = json.loads(capsys.readouterr().out)
    bundle = Path(printed["bundle"])
    assert verify_bundle(bundle).version == "1.15"
    signature = Path(printed["signature_file"]).read_text().strip()
    assert Path(printed["signature_file"]).name == bundle.name + ".sig"
    assert Path(printed["certificate_file"]).read_text() == files["cert"].read_text()
    firmware = json.loads(Path(printed["firmware_file"]).read_text())
    assert firmware == printed["firmware"] == {"signingCertificate": files["cert"].read_text(),
                                               "signature": signature}
    assert firmware_sig.verify_file_signature(bundle, signature, firmware["signingCertificate"]).ok

    assert run(["firmware", "verify", str(bundle), "--signature", printed["signature_file"],
                "--cert", str(files["cert"]), "--root", str(files["root"])]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.15"
    # The Base64 text itself works as --signature too.
    assert run(["firmware", "verify", str(bundle), "--signature", signature, "--cert", str(files["cert"])]) == 0
    capsys.readouterr()

    other = _signing_files(tmp_path, "Other Root")
    assert run(["firmware", "verify", str(bundle), "--signature", signature, "--cert", str(files["cert"]),
                "--root", str(other["root"])]) == 1
    err = capsys.readouterr().err
    assert "signing certificate refused (InvalidCertificate)" in err and "not issued by" in err
    assert run(["firmware", "verify", str(bundle), "--signature", signature, "--cert", str(other["cert"])]) == 1
    assert "InvalidSignature: the signature does not match the file" in capsys.readouterr().err


def test_build_sign_refuses_a_key_that_is_not_the_certificates(bundles: Bundles, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    files, other = _signing_files(tmp_path), _signing_files(tmp_path, "Other Root")
    out = tmp_path / "out"
    assert run(["firmware", "build", "--source", str(bundles.source), "--out", str(out), "--version", "1.16",
                "--sign", str(other["key"]), "--cert", str(files["cert"])]) == 1
    assert "is not the key of the certificate" in capsys.readouterr().err
    assert not out.exists()  # nothing built
    assert run(["firmware", "build", "--source", str(bundles.source), "--out", str(out),
                "--sign", str(files["key"])]) == 2
    assert run(["firmware", "verify", str(bundles.good["1.11"]), "--signature", "AAAA"]) == 2
