"""File transfers for UpdateFirmware and GetDiagnostics: http, https, ftp, ftps.

The protocols are the four values of SupportedFileTransferProtocols (OCPP 1.6
ERRATA 3.90: FTP, FTPS, HTTP, HTTPS). Everything is stdlib (``urllib``, ``ftplib``)
run in a worker thread, so the station's event loop keeps serving transactions.

* Credentials come from the URL (``ftp://user:pass@host/path``); HTTP gets them as
  Basic auth. FTP without credentials logs in as ``anonymous``.
* FTP paths follow RFC 1738 / curl: ``ftp://host/a/b`` is ``a/b`` relative to the login
  directory; write ``ftp://host/%2Fa/b`` for an absolute path. Passive mode.
* ``ftps`` is explicit FTPS (AUTH TLS on the control port, then ``PROT P`` for data;
  RFC 4217). Implicit FTPS (port 990) is not supported.
* https and ftps verify the server certificate and host name against the system CA
  store, plus ``ca_file`` when given (``[firmware] ca_file``).
* HTTP upload: ``PUT`` (default) sends the file as the body to the URL;
  ``POST`` sends ``multipart/form-data`` with the file in the field ``file``.
  Any 2xx answer is success.

Every failure is a :class:`TransferError` whose message says what went wrong in words
an operator can act on: unsupported scheme, host unreachable, HTTP status, login
refused, file not found, truncated transfer, disk full, TLS trust. A download goes to
``<dest>.part`` and is renamed onto ``dest`` only when complete, so a failed one never
leaves a file that looks finished.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ftplib
import http.client
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import twin

__all__ = ["SCHEMES", "TransferError", "download", "redact_url", "upload"]

SCHEMES = ("ftp", "ftps", "http", "https")
_CHUNK = 64 * 1024
_USER_AGENT = f"ocpp-twin/{twin.__version__}"

Progress = Callable[[int, "int | None"], None]
_T = TypeVar("_T")


class TransferError(Exception):
    """A download or upload failed; the message is meant for the log and the operator."""


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs, status and diagnostics)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int | None
    user: str | None
    password: str | None
    path: str
    shown: str  # redacted, for messages

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


def _parse(url: str) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise TransferError("empty location URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TransferError(f"malformed URL {redact_url(url)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TransferError(f"unsupported scheme {scheme or '(none)'!r} in {redact_url(url)!r}; "
                            f"supported: {', '.join(SCHEMES)}")
    if not parts.hostname:
        raise TransferError(f"no host in {redact_url(url)!r}")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return _Target(scheme, parts.hostname, port, user, password, parts.path, redact_url(url))


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # system store, hostname checking on
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TransferError(f"cannot load CA file {ca_file}: {exc}") from exc
    return ctx


def _network_error(exc: BaseException, target: _Target, timeout: float) -> TransferError:
    """Turn what sockets, ssl, urllib and ftplib raise into one clear sentence."""
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        what = "login refused" if exc.code in (401, 403) else "server answered"
        return TransferError(f"{what}: HTTP {exc.code} {exc.reason} for {target.shown}")
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _network_error(exc.reason, target, timeout)
    if isinstance(exc, socket.gaierror):
        return TransferError(f"cannot resolve host {target.host!r}: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return TransferError(f"host unreachable: connection to {target.where} refused ({target.shown})")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TransferError(f"no answer from {target.where} within {timeout:g} s ({target.shown})")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransferError(f"TLS certificate of {target.host} not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return TransferError(f"TLS error with {target.where}: {exc.reason or exc}")
    if isinstance(exc, ftplib.Error):
        return TransferError(f"FTP server {target.where} answered: {str(exc).strip()} ({target.shown})")
    if isinstance(exc, http.client.IncompleteRead):
        return TransferError(f"truncated download: got {len(exc.partial)} bytes, "
                             f"{exc.expected} more were announced ({target.shown})")
    if isinstance(exc, (http.client.HTTPException, EOFError)):
        return TransferError(f"connection to {target.where} broke off: {exc!r} ({target.shown})")
    if isinstance(exc, OSError):
        return TransferError(f"network error with {target.where}: {exc.strerror or exc} ({target.shown})")
    return TransferError(f"transfer from {target.shown} failed: {exc!r}")


class _Sink:
    """Where downloaded bytes go; local disk errors become TransferErrors right here, so
    they are never mistaken for network errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh: BinaryIO = open(path, "wb")
        except OSError as exc:
            raise self._disk_error(exc) from exc

    def _disk_error(self, exc: OSError) -> TransferError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TransferError(f"disk full while writing {self.path}")
        return TransferError(f"cannot write {self.path}: {exc.strerror or exc}")

    def write(self, data: bytes) -> None:
        try:
            self.fh.write(data)
        except OSError as exc:
            raise self._disk_error(exc) from exc

    def finish(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
        except OSError as exc:
            raise self._disk_error(exc) from exc

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass  # closing a file we are throwing away


class _Meter:
    """Counts bytes, reports progress, and stops the transfer when cancelled."""

    def __init__(self, total: int | None, report: Progress, cancel: threading.Event) -> None:
        self.done, self.total, self.report, self.cancel = 0, total, report, cancel

    def add(self, n: int) -> None:
        if self.cancel.is_set():
            raise TransferError("transfer cancelled")
        self.done += n
        self.report(self.done, self.total)


# -- download ---------------------------------------------------------------------------


async def download(url: str, dest: Path, *, progress: Progress, timeout: float = 30,
                   ca_file: Path | None = None) -> Path:
    """Download ``url`` to ``dest``; ``progress(received, total_or_None)`` is called on the
    event loop as bytes arrive. Returns ``dest``; raises TransferError."""
    target = _parse(url)
    return await _in_thread(lambda report, cancel: _download_sync(target, Path(dest), report, timeout, ca_file, cancel),
                            progress)


async def _in_thread(work: Callable[[Progress, threading.Event], _T], progress: Progress | None) -> _T:
    """Run a blocking transfer in a worker thread. Its progress reports hop to the event
    loop; cancelling the awaiting task tells the worker to stop at its next chunk."""
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def report(done: int, total: int | None) -> None:
        if progress is not None:
            try:
                loop.call_soon_threadsafe(progress, done, total)
            except RuntimeError:
                pass  # the loop is gone (station stopping); nobody is listening

    try:
        return await asyncio.to_thread(work, report, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise


def _download_sync(target: _Target, dest: Path, report: Progress, timeout: float, ca_file: Path | None,
                   cancel: threading.Event) -> Path:
    part = dest.with_name(dest.name + ".part")
    sink = _Sink(part)
    try:
        try:
            fetch = _http_get if target.scheme in ("http", "https") else _ftp_get
            meter = fetch(target, sink, report, timeout, ca_file, cancel)
        except Exception as exc:  # noqa: BLE001 -- classified into one TransferError
            raise _network_error(exc, target, timeout) from exc
        if meter.total is not None and meter.done != meter.total:
            raise TransferError(f"truncated download: got {meter.done} of {meter.total} bytes ({target.shown})")
        sink.finish()
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise TransferError(f"cannot move the download to {dest}: {exc.strerror or exc}") from exc
        return dest
    finally:
        sink.close()
        try:
            part.unlink()
        except OSError:
            pass  # already renamed, or never created


def _auth_header(target: _Target) -> dict[str, str]:
    if target.user is None:
        return {}
    token = base64.b64encode(f"{target.user}:{target.password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _http_url(target: _Target) -> str:
    # urllib does not take credentials in the URL: rebuild it without them.
    netloc = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port:
        netloc += f":{target.port}"
    parts = urlsplit(target.shown)
    return urlunsplit(SplitResult(target.scheme, netloc, parts.path or "/", parts.query, ""))


def _opener(target: _Target, ca_file: Path | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if target.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(ca_file)))
    return urllib.request.build_opener(*handlers)


def _http_get(target: _Target, sink: _Sink, report: Progress, timeout: float, ca_file: Path | None,
              cancel: threading.Event) -> _Meter:
    request = urllib.request.Request(_http_url(target), headers={"User-Agent": _USER_AGENT, **_auth_header(target)})
    with _opener(target, ca_file).open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        meter = _Meter(int(length) if length and length.isdigit() else None, report, cancel)
        while chunk := response.read(_CHUNK):
            sink.write(chunk)
            meter.add(len(chunk))
    return meter


def _ftp_path(target: _Target) -> str:
    path = unquote(target.path.removeprefix("/"))
    if not path or path.endswith("/"):
        raise TransferError(f"no file name in {target.shown}")
    return path


def _ftp_login(target: _Target, timeout: float, ca_file: Path | None) -> ftplib.FTP:
    ftp: ftplib.FTP
    if target.scheme == "ftps":
        ftp = ftplib.FTP_TLS(context=_ssl_context(ca_file), timeout=timeout)
    else:
        ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(target.host, target.port or 21)
        try:
            ftp.login(target.user or "anonymous", target.password or ("" if target.user else "anonymous@"))
        except ftplib.error_perm as exc:
            raise TransferError(f"FTP login to {target.where} as {target.user or 'anonymous'!r} refused: "
                                f"{str(exc).strip()}") from exc
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        return ftp
    except BaseException:
        ftp.close()
        raise


def _ftp_get(target: _Target, sink: _Sink, report: Progress, timeout: float, ca_file: Path | None,
             cancel: threading.Event) -> _Meter:
    path = _ftp_path(target)
    ftp = _ftp_login(target, timeout, ca_file)
    try:
        ftp.voidcmd("TYPE I")
        try:
            total = ftp.size(path)
        except ftplib.error_perm:
            total = None  # SIZE is optional (RFC 3659); RETR will say whether the file exists
        meter = _Meter(total, report, cancel)

        def write(chunk: bytes) -> None:
            sink.write(chunk)
            meter.add(len(chunk))

        ftp.retrbinary(f"RETR {path}", write, _CHUNK)
        return meter
    finally:
        _ftp_quit(ftp)


def _ftp_quit(ftp: ftplib.FTP) -> None:
    try:
        ftp.quit()
    except (OSError, EOFError, ftplib.Error):
        ftp.close()


# -- upload -----------------------------------------------------------------------------


async def upload(url: str, path: Path, *, timeout: float = 30, method: str = "PUT",
                 ca_file: Path | None = None, progress: Progress | None = None, name: str | None = None) -> None:
    """Upload the file at ``path`` to ``url`` (the full target: for FTP and HTTP PUT the
    URL includes the file name). ``method`` is PUT or POST for http(s); ``name`` is the
    file name a POST announces (default: ``path.name``). Raises TransferError."""
    target = _parse(url)
    method = method.upper()
    if method not in ("PUT", "POST"):
        raise TransferError(f"HTTP upload method must be PUT or POST, not {method!r}")
    await _in_thread(lambda report, cancel: _upload_sync(target, Path(path), name or Path(path).name, method, report,
                                                         timeout, ca_file, cancel), progress)


def _upload_sync(target: _Target, path: Path, name: str, method: str, report: Progress, timeout: float,
                 ca_file: Path | None, cancel: threading.Event) -> None:
    try:
        fh = open(path, "rb")
        size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise TransferError(f"cannot read {path} for upload: {exc.strerror or exc}") from exc
    meter = _Meter(size, report, cancel)
    with fh:
        try:
            if target.scheme in ("http", "https"):
                _http_send(target, name, fh, size, method, meter, timeout, ca_file)
            else:
                _ftp_put(target, fh, meter, timeout, ca_file)
        except Exception as exc:  # noqa: BLE001 -- classified into one TransferError
            raise _network_error(exc, target, timeout) from exc


class _CountingReader:
    """A file-like body for http.client: the parts in order, metered as they are read."""

    def __init__(self, parts: list[bytes | BinaryIO], meter: _Meter) -> None:
        self.parts, self.meter = parts, meter

    def read(self, n: int = -1) -> bytes:
        while self.parts:
            part = self.parts[0]
            if isinstance(part, bytes):
                self.parts.pop(0)
                return part
            data = part.read(n if n > 0 else _CHUNK)
            if data:
                self.meter.add(len(data))
                return data
            self.parts.pop(0)
        return b""


def _http_send(target: _Target, name: str, fh: BinaryIO, size: int, method: str, meter: _Meter,
               timeout: float, ca_file: Path | None) -> None:
    headers = {"User-Agent": _USER_AGENT, **_auth_header(target)}
    parts: list[bytes | BinaryIO]
    if method == "PUT":
        parts = [fh]
        headers["Content-Type"] = "application/gzip" if name.endswith(".gz") else "application/octet-stream"
        length = size
    else:
        boundary = f"ocpp-twin-{uuid.uuid4().hex}"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        parts = [head, fh, tail]
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        length = len(head) + size + len(tail)
    headers["Content-Length"] = str(length)
    request = urllib.request.Request(_http_url(target), data=_CountingReader(parts, meter),  # type: ignore[arg-type]
                                     headers=headers, method=method)
    with _opener(target, ca_file).open(request, timeout=timeout) as response:
        response.read()


def _ftp_put(target: _Target, fh: BinaryIO, meter: _Meter, timeout: float, ca_file: Path | None) -> None:
    path = _ftp_path(target)
    ftp = _ftp_login(target, timeout, ca_file)
    try:
        ftp.storbinary(f"STOR {path}", fh, _CHUNK, lambda chunk: meter.add(len(chunk)))
    finally:
        _ftp_quit(ftp)
