"""Downloads and uploads against real servers on loopback; the bytes that arrive are checked."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.firmware.certs import TlsFiles
from tests.firmware.servers import (
    FTP_PASSWORD,
    FTP_USER,
    FtpServer,
    HttpServer,
    SilentServer,
    free_port,
    multipart_file,
)
from twin.firmware.transfer import TransferError, download, redact_url, upload

PAYLOAD = os.urandom(300_000)  # several 64 KiB chunks, so progress is reported more than once


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


# -- downloads that work ---------------------------------------------------------------


async def test_ftp_download_with_credentials(ftp_server: FtpServer, tmp_path: Path) -> None:
    (ftp_server.home / "fw.tar.gz").write_bytes(PAYLOAD)
    progress = Progress()
    out = await download(ftp_server.url("fw.tar.gz"), tmp_path / "dl" / "fw.tar.gz", progress=progress)
    assert out.read_bytes() == PAYLOAD
    assert progress.calls[-1] == (len(PAYLOAD), len(PAYLOAD))  # SIZE gave the total
    assert len(progress.calls) > 1
    assert not (tmp_path / "dl" / "fw.tar.gz.part").exists()


async def test_ftp_download_anonymous(ftp_server: FtpServer, tmp_path: Path) -> None:
    (ftp_server.home / "pub").mkdir()
    (ftp_server.home / "pub" / "fw.bin").write_bytes(b"anonymous firmware")
    out = await download(ftp_server.url("pub/fw.bin", user=None), tmp_path / "fw.bin", progress=Progress())
    assert out.read_bytes() == b"anonymous firmware"


async def test_ftps_download_verifies_the_server(ftps_server: FtpServer, tls: TlsFiles, tmp_path: Path) -> None:
    (ftps_server.home / "fw.tar.gz").write_bytes(PAYLOAD)
    out = await download(ftps_server.url("fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress(),
                         ca_file=tls.ca_file)
    assert out.read_bytes() == PAYLOAD


async def test_ftps_untrusted_certificate_is_refused(ftps_server: FtpServer, tmp_path: Path) -> None:
    (ftps_server.home / "fw.tar.gz").write_bytes(PAYLOAD)
    with pytest.raises(TransferError, match="certificate of 127.0.0.1 not trusted"):
        await download(ftps_server.url("fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress())
    assert not (tmp_path / "fw.tar.gz").exists()


async def test_http_download(http_server: HttpServer, tmp_path: Path) -> None:
    http_server.files["/releases/fw.tar.gz"] = PAYLOAD
    progress = Progress()
    out = await download(http_server.url("releases/fw.tar.gz"), tmp_path / "fw.tar.gz", progress=progress)
    assert out.read_bytes() == PAYLOAD
    assert progress.calls[-1] == (len(PAYLOAD), len(PAYLOAD))


async def test_https_download_with_basic_auth(tls: TlsFiles, tmp_path: Path) -> None:
    with HttpServer(tls, credentials=("fw", "p@ss:word")) as server:
        server.files["/fw.tar.gz"] = PAYLOAD
        out = await download(server.url("fw.tar.gz", userinfo="fw:p%40ss%3Aword"), tmp_path / "fw.tar.gz",
                             progress=Progress(), ca_file=tls.ca_file)
        assert out.read_bytes() == PAYLOAD
        with pytest.raises(TransferError, match="login refused: HTTP 401"):
            await download(server.url("fw.tar.gz", userinfo="fw:wrong"), tmp_path / "again", progress=Progress(),
                           ca_file=tls.ca_file)


async def test_https_untrusted_certificate_is_refused(https_server: HttpServer, tmp_path: Path) -> None:
    https_server.files["/fw.tar.gz"] = PAYLOAD
    with pytest.raises(TransferError, match="not trusted"):
        await download(https_server.url("fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress())


# -- downloads that fail ------------------------------------------------------------------


async def test_http_404(http_server: HttpServer, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="HTTP 404 Not Found"):
        await download(http_server.url("nothing.tar.gz"), tmp_path / "x", progress=Progress())
    assert list(tmp_path.iterdir()) == []


async def test_ftp_missing_file(ftp_server: FtpServer, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="550"):
        await download(ftp_server.url("download_fail.fwi", user=None), tmp_path / "dl" / "x", progress=Progress())
    assert list((tmp_path / "dl").iterdir()) == []


async def test_ftp_login_refused(ftp_server: FtpServer, tmp_path: Path) -> None:
    (ftp_server.home / "fw.bin").write_bytes(b"x")
    with pytest.raises(TransferError, match=f"FTP login to 127.0.0.1:{ftp_server.port} as '{FTP_USER}' refused: 530"):
        await download(ftp_server.url("fw.bin", password="wrong"), tmp_path / "x", progress=Progress())


async def test_unreachable_host(tmp_path: Path) -> None:
    port = free_port()
    for url in (f"ftp://127.0.0.1:{port}/fw.bin", f"http://127.0.0.1:{port}/fw.bin"):
        with pytest.raises(TransferError, match=f"host unreachable: connection to 127.0.0.1:{port} refused"):
            await download(url, tmp_path / "x", progress=Progress())


async def test_silent_host_times_out(tmp_path: Path) -> None:
    with SilentServer() as silent:
        with pytest.raises(TransferError, match=f"no answer from 127.0.0.1:{silent.port} within 0.3 s"):
            await download(f"http://127.0.0.1:{silent.port}/fw.bin", tmp_path / "x", progress=Progress(), timeout=0.3)


async def test_truncated_http_download(http_server: HttpServer, tmp_path: Path) -> None:
    http_server.files["/fw.tar.gz"] = PAYLOAD
    with pytest.raises(TransferError, match=f"truncated download: got {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        await download(http_server.url("truncated/fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress())
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


async def test_disk_full(ftp_server: FtpServer, http_server: HttpServer, tiny_disk: Path) -> None:
    (ftp_server.home / "fw.tar.gz").write_bytes(PAYLOAD)  # 300 kB > the 256 KiB disk
    http_server.files["/fw.tar.gz"] = PAYLOAD
    for url in (ftp_server.url("fw.tar.gz"), http_server.url("fw.tar.gz")):
        with pytest.raises(TransferError, match="disk full while writing"):
            await download(url, tiny_disk / "fw.tar.gz", progress=Progress())
        assert list(tiny_disk.iterdir()) == []  # the space is given back


@pytest.mark.parametrize("url, message", [
    ("sftp://127.0.0.1/fw.bin", "unsupported scheme 'sftp'"),
    ("file:///etc/passwd", "unsupported scheme 'file'"),
    ("127.0.0.1/fw.bin", "unsupported scheme '(none)'"),
    ("http:///fw.bin", "no host in"),
    ("ftp://127.0.0.1:99999/fw.bin", "malformed URL"),
    ("", "empty location URL"),
])
async def test_bad_urls(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=re.escape(message)):
        await download(url, tmp_path / "x", progress=Progress())


def test_redact_url() -> None:
    assert redact_url("ftp://fw:s3cret@host:21/a") == "ftp://fw:***@host:21/a"
    assert redact_url("https://host/a?b=c") == "https://host/a?b=c"


# -- uploads ----------------------------------------------------------------------------


@pytest.fixture
def diag_file(tmp_path: Path) -> Path:
    path = tmp_path / "diagnostics-CP1-20260101T000000Z.tar.gz"
    path.write_bytes(PAYLOAD)
    return path


async def test_ftp_upload(ftp_server: FtpServer, diag_file: Path) -> None:
    progress = Progress()
    await upload(ftp_server.url(f"files/{diag_file.name}"), diag_file, progress=progress)
    assert (ftp_server.home / "files" / diag_file.name).read_bytes() == PAYLOAD
    assert progress.calls[-1] == (len(PAYLOAD), len(PAYLOAD))


async def test_ftps_upload(ftps_server: FtpServer, tls: TlsFiles, diag_file: Path) -> None:
    await upload(ftps_server.url(f"files/{diag_file.name}"), diag_file, ca_file=tls.ca_file)
    assert (ftps_server.home / "files" / diag_file.name).read_bytes() == PAYLOAD


async def test_ftp_upload_to_missing_directory_fails(ftp_server: FtpServer, diag_file: Path) -> None:
    with pytest.raises(TransferError, match="550"):
        await upload(ftp_server.url(f"files/failedLocation/{diag_file.name}"), diag_file)


async def test_ftp_upload_anonymous_cannot_write(ftp_server: FtpServer, diag_file: Path) -> None:
    with pytest.raises(TransferError, match="550"):
        await upload(ftp_server.url(f"files/{diag_file.name}", user=None), diag_file)
    assert not (ftp_server.home / "files" / diag_file.name).exists()


async def test_http_put(http_server: HttpServer, diag_file: Path) -> None:
    await upload(http_server.url(f"diag/{diag_file.name}"), diag_file)
    headers, body = http_server.received[f"/diag/{diag_file.name}"]
    assert body == PAYLOAD
    assert headers["Content-Type"] == "application/gzip"


async def test_https_post_multipart(https_server: HttpServer, tls: TlsFiles, diag_file: Path) -> None:
    await upload(https_server.url("upload"), diag_file, method="POST", ca_file=tls.ca_file, name="diag.tar.gz")
    headers, body = https_server.received["/upload"]
    assert multipart_file(headers, body) == ("file", "diag.tar.gz", PAYLOAD)


async def test_upload_failures(http_server: HttpServer, diag_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="cannot read .* for upload"):
        await upload(http_server.url("x"), tmp_path / "missing.tar.gz")
    with pytest.raises(TransferError, match="must be PUT or POST"):
        await upload(http_server.url("x"), diag_file, method="PATCH")
    with pytest.raises(TransferError, match="host unreachable"):
        await upload(f"http://127.0.0.1:{free_port()}/x", diag_file)
    with pytest.raises(TransferError, match="unsupported scheme 'scp'"):
        await upload("scp://127.0.0.1/x", diag_file)


async def test_credentials_with_special_characters_reach_ftp(tmp_path: Path) -> None:
    # ftp://user:pass@host: percent-encoded characters in the password are decoded.
    with FtpServer(tmp_path / "root") as server:
        server.server.handler.authorizer.add_user("odd", "p@ss/w:rd", str(server.home), perm="elr")
        (server.home / "f.bin").write_bytes(b"odd user")
        out = await download(f"ftp://odd:p%40ss%2Fw%3Ard@127.0.0.1:{server.port}/f.bin", tmp_path / "f.bin",
                             progress=Progress())
        assert out.read_bytes() == b"odd user"
        assert FTP_PASSWORD not in redact_url(server.url("f.bin"))
