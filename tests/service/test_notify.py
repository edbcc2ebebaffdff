"""sd_notify over a real socket the test owns, through both transports."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest

from tests.service.dgram import DatagramSink
from twin.service.notify import Notifier


@pytest.fixture
def sink() -> Iterator[DatagramSink]:
    s = DatagramSink()
    yield s
    s.close()


@pytest.fixture
def abstract_sink() -> Iterator[DatagramSink]:
    s = DatagramSink(abstract=True)
    yield s
    s.close()


def _notifier(backend: str, address: str, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Notifier:
    """systemd-python reads the process environment, so both paths get it there."""
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    notifier = Notifier(backend=backend)  # type: ignore[arg-type]
    assert notifier.backend == backend
    return notifier


@pytest.mark.parametrize("backend", ["systemd", "builtin"])
def test_ready_status_watchdog_stopping_reach_the_socket(backend: str, sink: DatagramSink,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = _notifier(backend, sink.address, monkeypatch)
    assert notifier.enabled
    notifier.ready("Accepted, online, queue 0")
    notifier.status("Pending\nonline")
    notifier.watchdog()
    notifier.stopping()
    assert sink.recv_text() == "READY=1\nSTATUS=Accepted, online, queue 0"
    assert sink.recv_text() == "STATUS=Pending online"  # a newline would start a new assignment
    assert sink.recv_text() == "WATCHDOG=1"
    assert sink.recv_text() == "STOPPING=1"


@pytest.mark.parametrize("backend", ["systemd", "builtin"])
def test_abstract_namespace_socket(backend: str, abstract_sink: DatagramSink, monkeypatch: pytest.MonkeyPatch) -> None:
    assert abstract_sink.address.startswith("@")
    notifier = _notifier(backend, abstract_sink.address, monkeypatch)
    notifier.ready()
    assert abstract_sink.recv_text() == "READY=1"


def test_builtin_uses_the_given_environ_not_the_process_one(sink: DatagramSink,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier({"NOTIFY_SOCKET": sink.address})
    # systemd-python is installed here, but it would read os.environ: auto must not pick it.
    assert notifier.backend == "builtin"
    notifier.watchdog()
    assert sink.recv_text() == "WATCHDOG=1"


def test_auto_prefers_systemd_python_when_it_sees_the_same_socket(sink: DatagramSink,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", sink.address)
    assert Notifier().backend == "systemd"


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()
    assert notifier.watchdog_interval() is None


@pytest.mark.parametrize("backend", ["systemd", "builtin"])
def test_a_missing_socket_never_raises_and_logs_once_at_debug(backend: str, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    notifier = _notifier(backend, "/nonexistent/notify.sock", monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="twin.service.notify"):
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    records = [r for r in caplog.records if r.name == "twin.service.notify"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert "/nonexistent/notify.sock" in records[0].getMessage()


def test_a_relative_notify_socket_is_refused_quietly(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "relative.sock"}, backend="builtin")
    with caplog.at_level(logging.DEBUG, logger="twin.service.notify"):
        notifier.watchdog()
    assert "unsupported NOTIFY_SOCKET" in caplog.text


def test_builtin_never_blocks_on_a_full_receive_queue(sink: DatagramSink) -> None:
    """The sink never reads; the kernel queue fills; pings must be dropped, not block
    the event loop. (systemd-python's sd_notify blocks there, holding the GIL.)"""
    notifier = Notifier({"NOTIFY_SOCKET": sink.address}, backend="builtin")
    sent = threading.Event()

    def flood() -> None:
        for _ in range(5000):
            notifier.watchdog()
        sent.set()

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    assert sent.wait(30), "a full notify queue blocked the sender"
    assert len(sink.pending()) < 5000  # some were really dropped: the queue was full


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "me"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, backend="builtin")
    assert notifier.watchdog_interval() == expected


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown sd_notify backend 'dbus'"):
        Notifier({}, backend="dbus")  # type: ignore[arg-type]
