"""Downloads and uploads against real servers on loopback; the bytes that arrive are checked."""

from __future__ import annotations

import base64
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


# -- redirects ----------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_redirect_to_another_host_is_followed_without_the_credentials(tmp_path: Path) -> None:
    # A release server that hands the file off to a CDN on another host (and port).
    with HttpServer(credentials=("fw", "s3cret")) as release, HttpServer(host="127.0.0.2") as cdn:
        cdn.files["/blobs/fw.tar.gz"] = PAYLOAD
        release.redirects["/fw.tar.gz"] = (302, cdn.url("blobs/fw.tar.gz"))
        out = await download(release.url("fw.tar.gz", userinfo="fw:s3cret"), tmp_path / "fw.tar.gz",
                             progress=Progress())
        assert out.read_bytes() == PAYLOAD
        assert [(m, p) for m, p, _ in cdn.requests] == [("GET", "/blobs/fw.tar.gz")]
        (_, _, cdn_headers), = cdn.requests
        assert "Authorization" not in cdn_headers and "s3cret" not in repr(cdn_headers)
        assert release.requests[0][2]["Authorization"] == basic("fw", "s3cret")


async def test_redirect_to_another_port_on_the_same_host_drops_the_credentials(tmp_path: Path) -> None:
    with HttpServer(credentials=("fw", "s3cret")) as release, HttpServer() as other_port:
        other_port.files["/fw.tar.gz"] = PAYLOAD
        release.redirects["/fw.tar.gz"] = (307, other_port.url("fw.tar.gz"))
        await download(release.url("fw.tar.gz", userinfo="fw:s3cret"), tmp_path / "fw.tar.gz", progress=Progress())
        assert all("Authorization" not in headers for _, _, headers in other_port.requests)


async def test_a_cross_origin_target_that_wants_the_credentials_says_so(tmp_path: Path) -> None:
    with HttpServer(credentials=("fw", "s3cret")) as release, \
            HttpServer(host="127.0.0.2", credentials=("fw", "s3cret")) as cdn:
        release.redirects["/fw.tar.gz"] = (302, cdn.url("fw.tar.gz"))
        with pytest.raises(TransferError, match=r"login refused: HTTP 401 .*redirected to http://127\.0\.0\.2:"
                                                r"\d+/fw\.tar\.gz, another origin, which is not sent the credentials"):
            await download(release.url("fw.tar.gz", userinfo="fw:s3cret"), tmp_path / "fw.tar.gz",
                           progress=Progress())
        assert all("Authorization" not in headers for _, _, headers in cdn.requests)


async def test_same_origin_redirect_keeps_the_credentials(tmp_path: Path) -> None:
    with HttpServer(credentials=("fw", "s3cret")) as release:
        release.files["/v1.11/fw.tar.gz"] = PAYLOAD
        release.redirects["/latest"] = (302, "/v1.11/fw.tar.gz")  # relative Location (RFC 9110 10.2.2)
        out = await download(release.url("latest", userinfo="fw:s3cret"), tmp_path / "fw.tar.gz",
                             progress=Progress())
        assert out.read_bytes() == PAYLOAD
        assert [headers.get("Authorization") for _, _, headers in release.requests] == [basic("fw", "s3cret")] * 2


async def test_https_to_http_redirect_is_refused(https_server: HttpServer, http_server: HttpServer, tls: TlsFiles,
                                                 tmp_path: Path) -> None:
    http_server.files["/fw.tar.gz"] = PAYLOAD
    https_server.redirects["/fw.tar.gz"] = (301, http_server.url("fw.tar.gz"))
    with pytest.raises(TransferError, match=r"HTTP 301 redirect to http://127\.0\.0\.1:\d+/fw\.tar\.gz refused: "
                                            r"it goes from https down to plain http"):
        await download(https_server.url("fw.tar.gz", userinfo="fw:s3cret"), tmp_path / "fw.tar.gz",
                       progress=Progress(), ca_file=tls.ca_file)
    assert http_server.requests == []
    assert list(tmp_path.iterdir()) == []


async def test_http_to_https_redirect_is_followed_and_verified(http_server: HttpServer, https_server: HttpServer,
                                                               tls: TlsFiles, tmp_path: Path) -> None:
    https_server.files["/fw.tar.gz"] = PAYLOAD
    http_server.redirects["/fw.tar.gz"] = (301, https_server.url("fw.tar.gz"))
    out = await download(http_server.url("fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress(),
                         ca_file=tls.ca_file)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(TransferError, match="not trusted"):  # without the CA: the https hop is still checked
        await download(http_server.url("fw.tar.gz"), tmp_path / "again", progress=Progress())


async def test_redirect_to_ftp_is_refused(http_server: HttpServer, ftp_server: FtpServer, tmp_path: Path) -> None:
    (ftp_server.home / "fw.tar.gz").write_bytes(PAYLOAD)
    http_server.redirects["/fw.tar.gz"] = (302, ftp_server.url("fw.tar.gz", user=None))
    with pytest.raises(TransferError, match=r"refused: it goes to another protocol \(ftp\)"):
        await download(http_server.url("fw.tar.gz"), tmp_path / "dl" / "fw.tar.gz", progress=Progress())
    assert list((tmp_path / "dl").iterdir()) == []


async def test_redirect_that_carries_credentials_is_refused(http_server: HttpServer, tmp_path: Path) -> None:
    http_server.redirects["/fw.tar.gz"] = (302, f"http://evil:pw@127.0.0.1:{http_server.port}/x")
    with pytest.raises(TransferError, match=r"redirect to http://evil:\*\*\*@127\.0\.0\.1:\d+/x refused: "
                                            r"it goes to a URL that carries credentials"):
        await download(http_server.url("fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress())


async def test_uploads_do_not_follow_redirects(diag_file: Path) -> None:
    # urllib would re-send a 302'd POST as a GET, with the headers, to the new host.
    with HttpServer(credentials=("fw", "s3cret")) as first, HttpServer(host="127.0.0.2") as second:
        second.files["/elsewhere"] = b"ok"
        first.redirects["/upload"] = (302, second.url("elsewhere"))
        for method in ("POST", "PUT"):
            with pytest.raises(TransferError, match="HTTP 302 redirect to .*uploads do not follow redirects"):
                await upload(first.url("upload", userinfo="fw:s3cret"), diag_file, method=method)
        assert second.requests == []


# -- size cap -----------------------------------------------------------------------------


async def test_download_over_the_cap_fails_before_writing(http_server: HttpServer, ftp_server: FtpServer,
                                                          tmp_path: Path) -> None:
    http_server.files["/fw.tar.gz"] = PAYLOAD
    (ftp_server.home / "fw.tar.gz").write_bytes(PAYLOAD)
    for url in (http_server.url("fw.tar.gz"), ftp_server.url("fw.tar.gz")):  # Content-Length, FTP SIZE
        progress = Progress()
        with pytest.raises(TransferError, match=rf"download too large: .* is {len(PAYLOAD)} bytes, "
                                                r"over the limit of 100000 bytes"):
            await download(url, tmp_path / "dl" / "fw.tar.gz", progress=progress, max_bytes=100_000)
        assert progress.calls == []
        assert list((tmp_path / "dl").iterdir()) == []


async def test_download_without_a_length_stops_at_the_cap(http_server: HttpServer, tmp_path: Path) -> None:
    http_server.files["/fw.tar.gz"] = PAYLOAD
    progress = Progress()
    with pytest.raises(TransferError, match="download too large: .* sent more than the limit of 100000 bytes"):
        await download(http_server.url("unsized/fw.tar.gz"), tmp_path / "fw.tar.gz", progress=progress,
                       max_bytes=100_000)
    assert progress.calls and max(done for done, _ in progress.calls) <= 100_000
    assert list(tmp_path.iterdir()) == []
    # At the cap exactly is fine.
    out = await download(http_server.url("unsized/fw.tar.gz"), tmp_path / "fw.tar.gz", progress=Progress(),
                         max_bytes=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
