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
  Any 2xx answer is success. An upload never follows a redirect (urllib would turn
  a redirected POST into a GET without the file and report success).
* HTTP download redirects (RFC 9110 section 15.4) are followed between http and https
  only, never from https down to http: firmware bundles carry checksums, not
  signatures, so TLS is what keeps them authentic in transit. The Basic credentials
  from the URL go only to the origin (scheme, host, port: RFC 6454) they were given
  for; a redirect to another origin is followed without them, like curl and browsers
  do, so a release server may hand the file off to a CDN.
* ``max_bytes`` caps a download: a larger announced size (Content-Length, FTP SIZE)
  fails before anything is written, and the transfer stops as soon as more arrives.

Every failure is a :class:`TransferError` whose message says what went wrong in words
an operator can act on: unsupported scheme, host unreachable, HTTP status, login
refused, file not found, truncated transfer, too large, refused redirect, disk full,
TLS trust. A download goes to
``<dest>.part`` and is renamed onto ``dest`` only when complete, so a failed one never
leaves a file that looks finished.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ftplib
import http.client
import logging
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
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

import twin

__all__ = ["BAD_REQUEST", "FAILED", "PERMISSION", "SCHEMES", "UNSUPPORTED", "TransferError", "download", "redact_url",
           "upload"]

SCHEMES = ("ftp", "ftps", "http", "https")
_CHUNK = 64 * 1024
_USER_AGENT = f"ocpp-twin/{twin.__version__}"

Progress = Callable[[int, "int | None"], None]
_T = TypeVar("_T")

log = logging.getLogger(__name__)
_DEFAULT_PORTS = {"http": 80, "https": 443}


#: TransferError.kind values. GetLog reports them as distinct LogStatusNotification
#: statuses (N01.FR.10); UpdateFirmware and GetDiagnostics only tell failed from done.
FAILED, PERMISSION, UNSUPPORTED, BAD_REQUEST = "failed", "permission", "unsupported", "bad-request"


class TransferError(Exception):
    """A download or upload failed; the message is meant for the log and the operator.

    ``kind`` says what sort of failure: :data:`PERMISSION` (login refused, HTTP 401/403,
    FTP 530/550 permission), :data:`UNSUPPORTED` (a scheme we do not speak),
    :data:`BAD_REQUEST` (a malformed location) or :data:`FAILED` (everything else:
    network, server, disk). Only FAILED can get better by trying again."""

    def __init__(self, message: str, *, kind: str = FAILED) -> None:
        super().__init__(message)
        self.kind = kind


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
        raise TransferError("empty location URL", kind=BAD_REQUEST)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TransferError(f"malformed URL {redact_url(url)!r}: {exc}", kind=BAD_REQUEST) from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TransferError(f"unsupported scheme {scheme or '(none)'!r} in {redact_url(url)!r}; "
                            f"supported: {', '.join(SCHEMES)}", kind=UNSUPPORTED)
    if not parts.hostname:
        raise TransferError(f"no host in {redact_url(url)!r}", kind=BAD_REQUEST)
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
        answered = getattr(exc, "url", None) or exc.filename
        answered = answered if isinstance(answered, str) else None
        hop = ""
        if answered and answered != _http_url(target):
            hop = f" (redirected to {_shown_without_query(answered)}"
            if target.user is not None and _origin(answered) != _origin(_http_url(target)):
                hop += ", another origin, which is not sent the credentials"
            hop += ")"
        return TransferError(f"{what}: HTTP {exc.code} {exc.reason} for {target.shown}{hop}",
                             kind=PERMISSION if exc.code in (401, 403) else FAILED)
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
        return TransferError(f"FTP server {target.where} answered: {str(exc).strip()} ({target.shown})",
                             kind=_ftp_kind(exc))
    if isinstance(exc, http.client.IncompleteRead):
        return TransferError(f"truncated download: got {len(exc.partial)} bytes, "
                             f"{exc.expected} more were announced ({target.shown})")
    if isinstance(exc, (http.client.HTTPException, EOFError)):
        return TransferError(f"connection to {target.where} broke off: {exc!r} ({target.shown})")
    if isinstance(exc, OSError):
        return TransferError(f"network error with {target.where}: {exc.strerror or exc} ({target.shown})")
    return TransferError(f"transfer from {target.shown} failed: {exc!r}")


def _ftp_kind(exc: ftplib.Error) -> str:
    """530/532: not logged in / no account; 550 and 553 with words of permission (pyftpdlib:
    "Not enough privileges", vsftpd: "Permission denied"): the login may not write there."""
    text = str(exc).strip()
    code = text[:3]
    if code in ("530", "532"):
        return PERMISSION
    if code in ("550", "553") and any(w in text.lower() for w in ("permission", "privilege", "denied")):
        return PERMISSION
    return FAILED


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
    """Counts bytes, reports progress, and stops the transfer when cancelled or when more
    than ``limit`` bytes arrive (call :meth:`add` before storing the chunk)."""

    def __init__(self, total: int | None, report: Progress, cancel: threading.Event,
                 limit: int | None = None, shown: str = "") -> None:
        self.done, self.total, self.report, self.cancel = 0, total, report, cancel
        self.limit, self.shown = limit, shown
        if limit is not None and total is not None and total > limit:
            raise TransferError(f"download too large: {shown} is {total} bytes, over the limit of "
                                f"{_size(limit)}")

    def add(self, n: int) -> None:
        if self.cancel.is_set():
            raise TransferError("transfer cancelled")
        self.done += n
        if self.limit is not None and self.done > self.limit:
            raise TransferError(f"download too large: {self.shown} sent more than the limit of {_size(self.limit)}")
        self.report(self.done, self.total)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


# -- download ---------------------------------------------------------------------------


async def download(url: str, dest: Path, *, progress: Progress, timeout: float = 30,
                   ca_file: Path | None = None, max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest``; ``progress(received, total_or_None)`` is called on the
    event loop as bytes arrive. More than ``max_bytes`` fails. Returns ``dest``; raises
    TransferError and leaves neither ``dest`` nor a partial file behind."""
    target = _parse(url)
    return await _in_thread(lambda report, cancel: _download_sync(target, Path(dest), report, timeout, ca_file,
                                                                  cancel, max_bytes),
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
                   cancel: threading.Event, max_bytes: int | None) -> Path:
    if cancel.is_set():  # cancelled before this worker even started: touch nothing
        raise TransferError("transfer cancelled")
    part = dest.with_name(dest.name + ".part")
    sink = _Sink(part)
    try:
        try:
            fetch = _http_get if target.scheme in ("http", "https") else _ftp_get
            meter = fetch(target, sink, report, timeout, ca_file, cancel, max_bytes)
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


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in: the origin of RFC 6454."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _shown_without_query(url: str) -> str:
    # A redirect target's query often is a credential itself (a pre-signed object-store URL).
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment=""))


class _DownloadRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a download's redirects within http/https, never https -> http, and drops
    the Authorization header when the redirect leaves the origin the credentials are for."""

    def __init__(self, first_url: str) -> None:
        self.credentials_origin = _origin(first_url)

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def] # urllib's API
        location = headers.get("Location") or headers.get("URI")
        if location:
            try:
                next_url = urljoin(req.full_url, location.strip())
                parts = urlsplit(next_url)
                scheme = parts.scheme.lower()
            except ValueError:
                fp.close()
                raise TransferError(f"HTTP {code} redirect to a malformed URL refused") from None
            refusal = None
            if scheme not in ("http", "https"):
                refusal = f"to another protocol ({scheme or 'none'}); downloads redirect between http and https only"
            elif scheme == "http" and urlsplit(req.full_url).scheme.lower() == "https":
                refusal = "from https down to plain http"
            elif parts.username is not None or parts.password is not None:
                refusal = "to a URL that carries credentials"
            if refusal is not None:
                fp.close()
                raise TransferError(f"HTTP {code} redirect to {redact_url(_shown_without_query(next_url))} "
                                    f"refused: it goes {refusal}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != self.credentials_origin and new.has_header("Authorization"):
            new.remove_header("Authorization")
            log.info("download redirected to %s, another origin: following it without the credentials",
                     _shown_without_query(newurl))
        return new


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Uploads: a redirect is an error (urllib would re-send a redirected POST as a GET
    without the file, and call the 200 that follows a success)."""

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def] # urllib's API
        fp.close()
        location = headers.get("Location") or "(no Location)"
        raise TransferError(f"server answered HTTP {code} redirect to {redact_url(_shown_without_query(location))}; "
                            "uploads do not follow redirects, give the final URL")

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(target: _Target, ca_file: Path | None, redirects: urllib.request.HTTPRedirectHandler
            ) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [redirects]
    if target.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(ca_file)))
    elif ca_file is not None and isinstance(redirects, _DownloadRedirects):
        # For an http -> https redirect. A CA file that does not load fails only that hop
        # (as an untrusted certificate), not a plain http download.
        try:
            handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(ca_file)))
        except TransferError as exc:
            log.warning("%s; an https redirect target is checked against the system CA store only", exc)
    return urllib.request.build_opener(*handlers)


def _http_get(target: _Target, sink: _Sink, report: Progress, timeout: float, ca_file: Path | None,
              cancel: threading.Event, max_bytes: int | None) -> _Meter:
    url = _http_url(target)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **_auth_header(target)})
    with _opener(target, ca_file, _DownloadRedirects(url)).open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        meter = _Meter(int(length) if length and length.isdigit() else None, report, cancel, max_bytes,
                       target.shown)
        while chunk := response.read(_CHUNK):
            meter.add(len(chunk))
            sink.write(chunk)
    return meter


def _ftp_path(target: _Target) -> str:
    path = unquote(target.path.removeprefix("/"))
    if not path or path.endswith("/"):
        raise TransferError(f"no file name in {target.shown}", kind=BAD_REQUEST)
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
                                f"{str(exc).strip()}", kind=PERMISSION) from exc
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        return ftp
    except BaseException:
        ftp.close()
        raise


def _ftp_get(target: _Target, sink: _Sink, report: Progress, timeout: float, ca_file: Path | None,
             cancel: threading.Event, max_bytes: int | None) -> _Meter:
    path = _ftp_path(target)
    ftp = _ftp_login(target, timeout, ca_file)
    try:
        ftp.voidcmd("TYPE I")
        try:
            total = ftp.size(path)
        except ftplib.error_perm:
            total = None  # SIZE is optional (RFC 3659); RETR will say whether the file exists
        meter = _Meter(total, report, cancel, max_bytes, target.shown)

        def write(chunk: bytes) -> None:
            meter.add(len(chunk))
            sink.write(chunk)

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
    with _opener(target, ca_file, _NoRedirects()).open(request, timeout=timeout) as response:
        response.read()


def _ftp_put(target: _Target, fh: BinaryIO, meter: _Meter, timeout: float, ca_file: Path | None) -> None:
    path = _ftp_path(target)
    ftp = _ftp_login(target, timeout, ca_file)
    try:
        ftp.storbinary(f"STOR {path}", fh, _CHUNK, lambda chunk: meter.add(len(chunk)))
    finally:
        _ftp_quit(ftp)
