"""Real file servers on loopback for the transfer tests: pyftpdlib (FTP, explicit FTPS)
and http.server (HTTP, HTTPS). Each runs in a thread and records what arrives."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer

from tests.conftest import free_port  # noqa: F401 - re-exported
from tests.firmware.certs import TlsFiles

logging.getLogger("pyftpdlib").setLevel(logging.WARNING)

FTP_USER, FTP_PASSWORD = "fw", "s3cret"


class FtpServer:
    """pyftpdlib on 127.0.0.1. ``home`` is the root: user ``fw`` may write anywhere,
    ``anonymous`` may only read. ``files/`` exists for uploads (TC_045)."""

    def __init__(self, home: Path, tls: TlsFiles | None = None) -> None:
        self.home = home
        (home / "files").mkdir(parents=True, exist_ok=True)
        authorizer = DummyAuthorizer()
        authorizer.add_user(FTP_USER, FTP_PASSWORD, str(home), perm="elradfmwMT")
        authorizer.add_anonymous(str(home))
        base = TLS_FTPHandler if tls else FTPHandler
        # auth_failed_timeout: pyftpdlib waits 3 s after a bad login by default.
        attrs: dict[str, object] = {"authorizer": authorizer, "banner": "test ftpd", "timeout": 30,
                                    "auth_failed_timeout": 0.05}
        if tls:
            attrs.update(certfile=str(tls.chain_file), tls_control_required=True, tls_data_required=True)
        handler = type("Handler", (base,), attrs)
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.address[1]
        self.scheme = "ftps" if tls else "ftp"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ftpd", daemon=True)

    def url(self, path: str, *, user: str | None = FTP_USER, password: str = FTP_PASSWORD) -> str:
        creds = f"{user}:{password}@" if user else ""
        return f"{self.scheme}://{creds}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        self.server.close_all()

    def __enter__(self) -> FtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class HttpServer:
    """http.server on ``host`` (127.0.0.1 unless told; optionally TLS).

    GET serves ``files``; ``/truncated/<name>`` announces the full length and sends half;
    ``/unsized/<name>`` sends the file without a Content-Length (the end is the close).
    ``redirects`` maps a path to (status, Location) and is answered for any method.
    PUT and POST store what arrives in ``received`` (path -> (headers, body)). Every
    request is recorded in ``requests`` as (method, path, headers). With
    ``credentials`` set every request needs that Basic auth, else 401.
    """

    def __init__(self, tls: TlsFiles | None = None, credentials: tuple[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, tuple[int, str]] = {}
        self.received: dict[str, tuple[dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.credentials = credentials
        self.host = host
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- stdlib name
                pass  # keep test output clean

            def _authorized(self) -> bool:
                outer.requests.append((self.command, self.path, dict(self.headers.items())))
                if outer.credentials is None:
                    return True
                expected = "Basic " + base64.b64encode(":".join(outer.credentials).encode()).decode()
                if self.headers.get("Authorization") == expected:
                    return True
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="fw"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def _redirected(self) -> bool:
                if self.path not in outer.redirects:
                    return False
                status, location = outer.redirects[self.path]
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_GET(self) -> None:  # noqa: N802 -- http.server API
                if not self._authorized() or self._redirected():
                    return
                if self.path.startswith("/unsized/"):
                    body = outer.files[self.path[len("/unsized"):]]
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.path.startswith("/truncated/"):
                    body = outer.files[self.path[len("/truncated"):]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _store(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self._redirected():
                    return
                outer.received[self.path] = (dict(self.headers.items()), body)
                self.send_response(201 if self.command == "PUT" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = _store  # noqa: N815 -- http.server API
            do_POST = _store  # noqa: N815 -- http.server API

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="httpd", daemon=True)

    def url(self, path: str, *, userinfo: str = "") -> str:
        return f"{self.scheme}://{userinfo + '@' if userinfo else ''}{self.host}:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> HttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def multipart_file(headers: dict[str, str], body: bytes) -> tuple[str, str, bytes]:
    """(field name, file name, content) of the one part in a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    (part,) = list(message.iter_parts())
    return part.get_param("name", header="content-disposition"), part.get_filename(), part.get_payload(decode=True)


class SilentServer:
    """Accepts TCP connections (the kernel does, via the backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
