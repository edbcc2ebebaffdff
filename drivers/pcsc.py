"""pyscard card reader: PC/SC insert detection in a thread, UID via ``FF CA 00 00 00``.

pyscard is imported lazily: it is an optional extra (``pi``) that needs libpcsclite-dev
and a compiler to build, and it is absent from the light install.

The watcher thread uses the low-level ``SCardGetStatusChange`` (it blocks in C, so it gets
its own thread) rather than ``CardMonitor``, because it must also see the context die
(pcscd restarted: SCARD_E_NO_SERVICE / SERVICE_STOPPED / INVALID_HANDLE) and build a new
one, and see readers come and go (USB unplug/replug). Taps hop to the event loop with
``call_soon_threadsafe`` (drivers.base).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from drivers.base import BuildContext, DriverError
from drivers.config import KindTable
from drivers.tap_debounce import DEFAULT_DEBOUNCE_S, TapDebouncer, uid_to_id_tag

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install pyscard (needs libpcsclite-dev and a compiler), or pip install 'ocpp-twin[pi]'"
GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]  # PC/SC part 3, 3.2.2.1.3: Get Data, UID
WAIT_MS = 500  # SCardGetStatusChange slice: bounds how long stop() and reader hot-plug detection take
RELIST_S = 2.0  # re-list readers this often to notice a newly plugged one
RETRY_S = 1.0  # retry establishing a context this often while pcscd is away
UID_ATTEMPTS = 3
UID_RETRY_S = 0.1


def _scard() -> Any:
    try:
        from smartcard import scard
    except ImportError as exc:
        raise DriverError(f"the pyscard package is not installed ({exc}); {INSTALL_HINT}") from exc
    return scard


def _err(scard: Any, rc: int) -> str:
    return f"{scard.SCardGetErrorMessage(rc).strip()} ({rc & 0xFFFFFFFF:#010x})"


def establish_context(scard: Any) -> Any:
    """A PC/SC context, or DriverError explaining that pcscd is missing."""
    rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rc != scard.SCARD_S_SUCCESS:
        raise DriverError(
            f"cannot reach pcscd: {_err(scard, rc)}. Is the pcscd package installed and the service running "
            f"(systemctl status pcscd.socket)?")
    return ctx


def list_readers(scard: Any, ctx: Any, match: str) -> list[str]:
    rc, readers = scard.SCardListReaders(ctx, [])
    if rc == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if rc != scard.SCARD_S_SUCCESS:
        raise DriverError(f"listing PC/SC readers failed: {_err(scard, rc)}")
    return [r for r in readers if match.lower() in r.lower()]


class PcscReader:
    def __init__(self, *, match: str = "", debounce_s: float = DEFAULT_DEBOUNCE_S, name: str = "PC/SC reader") -> None:
        self.match = match
        self.name = name
        self.debouncer = TapDebouncer(debounce_s)
        self._scard = _scard()
        self._ctx: Any = None
        self._ctx_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_tap: Callable[[str], None] | None = None
        self.readers: list[str] = []  # what the watcher currently sees
        self._unread: set[str] = set()  # readers with a card whose UID could not be read yet
        self.pcscd_up = False

    async def start(self, on_tap: Callable[[str], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_tap = on_tap
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pcsc-watcher", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        with self._ctx_lock:
            if self._ctx is not None:
                self._scard.SCardCancel(self._ctx)  # wakes a blocked SCardGetStatusChange
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None
        self._on_tap = None

    def describe(self) -> str:
        found = ", ".join(self.readers) if self.readers else f"no reader yet (filter {self.match!r}), waiting for one"
        return f"{self.name}: {found}"

    # --- watcher thread ----------------------------------------------------------------------

    def _run(self) -> None:
        missing_logged = False
        while not self._stop.is_set():
            try:
                self._open_context()
            except DriverError as exc:
                self.pcscd_up = False
                if not missing_logged:
                    log.error("card reader: %s; retrying every %.0f s", exc, RETRY_S)
                    missing_logged = True
                self._stop.wait(RETRY_S)
                continue
            if missing_logged:
                log.warning("card reader: pcscd is reachable again")
                missing_logged = False
            try:
                self._watch()
            except DriverError as exc:
                if not self._stop.is_set():
                    log.error("card reader: PC/SC context lost (%s); reconnecting", exc)
                    self._stop.wait(0.2)  # pcscd restarting: give it a moment
            finally:
                self._close_context()

    def _open_context(self) -> None:
        ctx = establish_context(self._scard)
        with self._ctx_lock:
            self._ctx = ctx
        self.pcscd_up = True

    def _close_context(self) -> None:
        with self._ctx_lock:
            ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._scard.SCardReleaseContext(ctx)

    def _watch(self) -> None:
        """Watch readers on one context until it dies (DriverError) or stop() is called."""
        sc = self._scard
        states: dict[str, int] = {}
        listed_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - listed_at >= RELIST_S or not states:
                readers = list_readers(sc, self._ctx, self.match)
                listed_at = now
                if readers != self.readers:
                    log.info("card reader: readers now %s", readers or "none")
                for gone in set(states) - set(readers):
                    self.debouncer.card_removed(gone, now)
                states = {r: states.get(r, sc.SCARD_STATE_UNAWARE) for r in readers}
                self.readers = readers
            if not states:
                self._stop.wait(WAIT_MS / 1000)
                continue
            rc, new = sc.SCardGetStatusChange(self._ctx, WAIT_MS, list(states.items()))
            if rc in (sc.SCARD_E_TIMEOUT, sc.SCARD_E_CANCELLED):
                for reader in list(self._unread & set(states)):
                    self._card_arrived(reader)
                continue
            if rc in (sc.SCARD_E_UNKNOWN_READER, sc.SCARD_E_READER_UNAVAILABLE):
                listed_at = 0.0  # a reader was unplugged: list again
                continue
            if rc != sc.SCARD_S_SUCCESS:
                raise DriverError(f"SCardGetStatusChange: {_err(sc, rc)}")
            for reader, event, _atr in new:
                if not event & sc.SCARD_STATE_CHANGED:
                    continue
                # Keep the event counter (high 16 bits) so a quick remove+insert is still seen.
                states[reader] = event & ~sc.SCARD_STATE_CHANGED
                self._on_state(reader, event)

    def _on_state(self, reader: str, event: int) -> None:
        sc = self._scard
        now = time.monotonic()
        if event & (sc.SCARD_STATE_UNKNOWN | sc.SCARD_STATE_UNAVAILABLE | sc.SCARD_STATE_EMPTY):
            self._unread.discard(reader)
            self.debouncer.card_removed(reader, now)
            return
        if not event & sc.SCARD_STATE_PRESENT or event & sc.SCARD_STATE_MUTE:
            return
        self._card_arrived(reader)

    def _card_arrived(self, reader: str) -> None:
        """Read the UID of the card on ``reader`` and tap it (once per presentation)."""
        id_tag = None
        for attempt in range(UID_ATTEMPTS):
            try:
                id_tag = uid_to_id_tag(self._read_uid(reader))
                break
            except (DriverError, ValueError) as exc:
                # A card still entering the field, or one swapped faster than the reader polls
                # (PC/SC then reports no change at all), fails the exchange: try again a little
                # later, and keep retrying on every idle round while the reader says "present".
                if attempt == UID_ATTEMPTS - 1:
                    if reader not in self._unread:
                        log.warning("card reader %s: a card is present but its UID could not be read: %s", reader, exc)
                    self._unread.add(reader)
                    return
                self._stop.wait(UID_RETRY_S)
        assert id_tag is not None
        if reader in self._unread:
            self._unread.discard(reader)
            self.debouncer.card_removed(reader, time.monotonic())  # an unreadable card then a readable one: a swap
        if self.debouncer.card_present(reader, id_tag, time.monotonic()):
            log.info("card reader %s: tap %s", reader, id_tag)
            loop, on_tap = self._loop, self._on_tap
            if loop is not None and on_tap is not None:
                loop.call_soon_threadsafe(on_tap, id_tag)

    def _read_uid(self, reader: str) -> bytes:
        sc = self._scard
        rc, card, proto = sc.SCardConnect(self._ctx, reader, sc.SCARD_SHARE_SHARED, sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1)
        if rc != sc.SCARD_S_SUCCESS:
            raise DriverError(f"connect: {_err(sc, rc)}")
        try:
            rc, resp = sc.SCardTransmit(card, proto, GET_UID)
            if rc != sc.SCARD_S_SUCCESS:
                raise DriverError(f"FF CA 00 00 00: {_err(sc, rc)}")
            if len(resp) < 2 or resp[-2:] != [0x90, 0x00]:
                sw = "".join(f"{b:02X}" for b in resp[-2:])
                raise DriverError(f"FF CA 00 00 00 answered SW={sw or 'nothing'} (not a contactless UID reader/card?)")
            return bytes(resp[:-2])
        finally:
            sc.SCardDisconnect(card, sc.SCARD_LEAVE_CARD)


# --- factory (see drivers.base.BuildContext) --------------------------------------------------


async def build_reader(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, PcscReader]:
    t = KindTable("reader", table)
    match = t.get_str("reader", "") or ""
    debounce = t.get_float("debounce_s", DEFAULT_DEBOUNCE_S, minimum=0.0)
    # pcscd up but no reader plugged in is a started backend waiting for a hot-plugged reader
    # (nothing is simulated); an explicit strict = true asks for a reader at start as well.
    require_reader = t.get_bool("strict", False)
    scard = _scard()
    pc_ctx = await asyncio.to_thread(establish_context, scard)  # pcscd missing -> DriverError
    try:
        readers = await asyncio.to_thread(list_readers, scard, pc_ctx, match)
    finally:
        scard.SCardReleaseContext(pc_ctx)
    if not readers and (require_reader or ctx.probe):
        raise DriverError(f"pcscd is running but no PC/SC reader{f' matching {match!r}' if match else ''} is connected")
    reader = PcscReader(match=match, debounce_s=debounce)
    reader.readers = readers
    return {0: reader}


build_reader.config_keys = frozenset({"reader", "debounce_s"})  # type: ignore[attr-defined]
