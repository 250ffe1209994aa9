"""The byte source for one meter: a serial device or a `socket://host:port` bridge (ser2net, ESP).

`LineReader` opens the line with pyserial-asyncio-fast, hands every chunk to a synchronous
`on_data(bytes)` callback the moment the event loop sees it, and keeps the line open: unplug
(SerialException/OSError), EOF from a bridge, a missing device or rejected line settings all lead to
a reopen after a backoff of 1 s doubling to 30 s. The backoff goes back to 1 s once a session has
delivered data.

Why a protocol and not `StreamReader.read()`: `data_received` runs straight from the selector
callback, so there is no intermediate buffer, no task switch per chunk, and nothing downstream can
make the reader wait; the kernel buffer keeps draining whatever the consumer does with the bytes.

Idle watchdog: when no byte has arrived for `idle_timeout` seconds (whether the line is open or
down), `on_silent(True)` is called once; the first byte afterwards calls `on_silent(False)`. Some
USB-serial adapters wedge without an error (the fd stays open, nothing arrives), so after
`silence_reopen_factor * idle_timeout` seconds of silence on an open line the reader closes and
reopens it.

Auto-baud: given several candidate `LineSettings` and a validator factory, the reader listens on each
for `probe_seconds`, feeds what arrives to a fresh validator, and locks onto the first setting on
which the validator accepts a frame. The bytes seen on the winning setting are then replayed to
`on_data`, so the frame that proved the setting is not lost. The reader never imports the decoder:
the caller supplies `new_validator`. `on_lock(settings)` reports the accepted setting (the daemon
persists it), and with `redetect_after` the reader probes again when bytes keep arriving but the
consumer's `decoded_frames()` count has not moved for that long (a meter swapped, a bridge
reconfigured).

Sources: a device path (pyserial-asyncio-fast on the fd), `socket://host:port` (a raw TCP bridge:
the bridge owns the serial framing, so there is nothing to set or probe), and
`rfc2217://host:port` (a telnet bridge with COM-PORT-OPTION, e.g. ser2net `telnet(rfc2217)`: the
framing is set remotely, so it is probed like a local port). pyserial's RFC 2217 client has no file
descriptor to poll, so it runs in a small reader thread that hands chunks to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import termios
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

log = logging.getLogger(__name__)

Parity: TypeAlias = Literal["N", "E", "O"]
ReaderState: TypeAlias = Literal["connecting", "open", "waiting_retry", "stopped"]
Validator: TypeAlias = Callable[[bytes], bool]

BACKOFF_INITIAL_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
DEFAULT_IDLE_TIMEOUT_S: Final = 30.0
DEFAULT_PROBE_SECONDS: Final = 12.0  # longest common push interval (10 s) plus a 2400-baud frame
OPEN_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
# Bytes kept while probing a line setting, replayed once it is accepted (115200 baud for 12 s fits).
PROBE_BUFFER_MAX: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Where and how to read: a device path or `socket://host:port`, and the serial framing.

    For `socket://` the bridge owns the serial line, so baud rate and framing are ignored here.
    """

    port: str
    baudrate: int = 2400
    parity: Parity = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("port is empty")
        if self.baudrate <= 0:
            raise ValueError("baudrate must be positive")
        if self.parity not in ("N", "E", "O") or self.bytesize not in (7, 8) or self.stopbits not in (1, 2):
            raise ValueError("line settings must be parity N/E/O, 7 or 8 data bits, 1 or 2 stop bits")

    @property
    def is_socket(self) -> bool:
        """A raw TCP bridge: the framing is the bridge's business, there is nothing to set or probe."""
        return self.port.startswith("socket://")

    @property
    def is_rfc2217(self) -> bool:
        """A telnet RFC 2217 bridge: the framing is set on the remote serial port, like a local one."""
        return self.port.startswith("rfc2217://")

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "baudrate": self.baudrate,
            "parity": self.parity,
            "bytesize": self.bytesize,
            "stopbits": self.stopbits,
        }

    @property
    def line(self) -> str:
        """The framing in the usual short form, e.g. `2400 8E1`."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def __str__(self) -> str:
        return self.port if self.is_socket else f"{self.port} {self.line}"


# Line settings to try for `baudrate = "auto"` and `amsd detect`, most common first (FIELD-NOTES
# "Serial line settings"). The order matters beyond speed: an 8N1 meter read as 8E1 and a 7E1 meter
# read as 8N1 can still produce frames now and then, so the setting that is right for most meters
# of a family must come before its near misses.
AUTO_LINE_SETTINGS: Final[tuple[tuple[int, Parity, Literal[7, 8], Literal[1, 2]], ...]] = (
    (2400, "E", 8, 1),  # Aidon, Kaifa, Sagemcom M-Bus (NO, SE, AT)
    (2400, "N", 8, 1),  # Kamstrup, Kaifa PL/AT, L+G AT
    (115200, "N", 8, 1),  # DSMR 4/5 P1, Iskra/L+G/Kamstrup P1
    (9600, "E", 7, 1),  # DSMR 2.2/3 (NL)
    (9600, "N", 8, 1),
    (38400, "N", 8, 1),  # Iskra AM550 HDLC
    (115200, "E", 7, 1),  # Iskra /ISK9 (SI)
)


def auto_candidates(port: str, *, baudrate: int | None = None, parity: Parity | None = None) -> list[LineSettings]:
    """The settings to probe, in order; `baudrate`/`parity` pin one half (`parity = "auto"` alone).

    A socket:// bridge gets a single candidate: its line settings are configured on the bridge and
    every setting would read the same bytes.
    """
    if port.startswith("socket://"):
        return [LineSettings(port)]
    chosen = [
        (baud, par, size, stop)
        for baud, par, size, stop in AUTO_LINE_SETTINGS
        if (baudrate is None or baud == baudrate) and (parity is None or par == parity)
    ]
    if not chosen and baudrate is not None:  # an unusual fixed baud rate: try the usual framings
        framings: tuple[tuple[Parity, Literal[7, 8]], ...] = (("E", 8), ("N", 8), ("E", 7))
        chosen = [(baudrate, par, size, 1) for par, size in framings if parity is None or par == parity]
    if not chosen:  # an unusual fixed parity: the usual baud rates with it
        assert parity is not None
        chosen = [(baud, parity, 8, 1) for baud in (2400, 115200, 9600, 38400)]
    return [LineSettings(port, baud, par, size, stop) for baud, par, size, stop in chosen]


def prefer(candidates: Sequence[LineSettings], first: LineSettings | None) -> list[LineSettings]:
    """`candidates` with `first` moved (or added) to the front: a remembered setting is tried first."""
    if first is None:
        return list(candidates)
    return [first, *(candidate for candidate in candidates if candidate != first)]


# ------------------------------------------------------------------------------------ persistence
def load_line_settings(path: Path, port: str) -> LineSettings | None:
    """The setting detected earlier for `port`, or None (no file, another port, unreadable file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("port") != port:
            return None
        # LineSettings validates the values; a hand-edited file with nonsense counts as no file.
        return LineSettings(port, int(data["baudrate"]), data["parity"], data["bytesize"], data["stopbits"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_line_settings(path: Path, settings: LineSettings) -> None:
    """Write the detected setting atomically (a crash never leaves half a file); raises OSError."""
    record = settings.to_json() | {"detected_at": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def describe_error(exc: BaseException | None, settings: LineSettings) -> str:
    """A one-line, user-facing reason for a failed open or a lost line (never contains secrets)."""
    if exc is None:
        remote = settings.is_socket or settings.is_rfc2217
        return "connection closed by the other end (EOF)" if remote else "line closed"
    # termios.error is not an OSError; it carries (errno, text). EINVAL means the tty refused the
    # framing, which is what a pseudo-terminal does for parity or 7 data bits.
    if isinstance(exc, termios.error):
        code = exc.args[0] if exc.args else None
        message = exc.args[1] if len(exc.args) > 1 else str(exc)
        text = f"line settings {settings.line} rejected by the device: {message}"
        if code == errno.EINVAL:
            text += " (a pseudo-terminal cannot do parity or 7 data bits)"
        return text
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out while opening"
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        return "device not found"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EACCES):
        return "permission denied (is the user in the dialout group?)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text


class _LineProtocol(asyncio.Protocol):
    """Forwards chunks synchronously and reports the end of the connection through a future."""

    __slots__ = ("_deliver", "lost")

    def __init__(self, deliver: Callable[[bytes], None], lost: asyncio.Future[BaseException | None]) -> None:
        self._deliver = deliver
        self.lost = lost

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost(None) follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def open_line(
    settings: LineSettings, deliver: Callable[[bytes], None], *, timeout: float = OPEN_TIMEOUT_S
) -> tuple[asyncio.BaseTransport, asyncio.Future[BaseException | None]]:
    """Open the line; chunks go to `deliver`. Returns the transport and a future set when it ends."""
    import serial_asyncio_fast  # lazy: keeps `amsd --version` and the decode tools light

    loop = asyncio.get_running_loop()
    lost: asyncio.Future[BaseException | None] = loop.create_future()
    protocol = _LineProtocol(deliver, lost)
    if settings.is_socket:
        parsed = urllib.parse.urlparse(settings.port)
        if not parsed.hostname or not parsed.port:
            raise ValueError("socket:// port needs a host and a port")
        transport, _ = await asyncio.wait_for(
            serial_asyncio_fast.create_serial_connection(loop, lambda: protocol, settings.port), timeout
        )
        return transport, lost
    if settings.is_rfc2217:
        return await _open_rfc2217(settings, protocol, timeout)

    # Open the tty ourselves rather than through create_serial_connection: when the transport's
    # set-up fails (a pty accepts parity once, then refuses it with EINVAL when the transport sets
    # the timeout) the library leaks the open, flock'ed fd and every retry then fails with "could not
    # exclusively lock". Here the instance is closed on any failure, including an open timeout.
    opening = loop.run_in_executor(None, functools.partial(_open_tty, settings))
    try:
        instance = await asyncio.wait_for(asyncio.shield(opening), timeout)
    except BaseException:
        opening.add_done_callback(_close_opened)
        raise
    try:
        transport, _ = await serial_asyncio_fast.connection_for_serial(loop, lambda: protocol, instance)
    except BaseException:
        with contextlib.suppress(Exception):
            instance.close()
        raise
    return transport, lost


def _open_tty(settings: LineSettings) -> Any:
    import serial

    # exclusive: two processes on one tty would each get half of the bytes, a classic field bug.
    # timeout=0: the transport sets it anyway; asking for it up front saves one reconfiguration.
    return serial.serial_for_url(
        settings.port,
        baudrate=settings.baudrate,
        parity=settings.parity,
        bytesize=settings.bytesize,
        stopbits=settings.stopbits,
        exclusive=True,
        timeout=0,
    )


class _ThreadedSerialTransport(asyncio.Transport):
    """A read-only transport over a pyserial instance without a pollable fd (the RFC 2217 client).

    A thread blocks in `read()` with a short timeout and hands each chunk to the loop. close()/abort()
    only flag the thread: it closes the instance itself (pyserial's close joins its own network
    thread, which must not happen on the event loop) and then reports `connection_lost`.
    """

    POLL_S: Final = 0.2

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, instance: Any) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._instance = instance
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name=f"amsd-rfc2217 {instance.port}", daemon=True)
        protocol.connection_made(self)
        self._thread.start()

    def _read_loop(self) -> None:
        instance = self._instance
        error: Exception | None = None
        try:
            while not self._closing.is_set():
                data = instance.read(max(1, instance.in_waiting))
                if data and not self._closing.is_set():
                    self._loop.call_soon_threadsafe(self._protocol.data_received, data)
        except Exception as exc:  # the bridge went away: the reader reopens
            error = exc
        finally:
            with contextlib.suppress(Exception):
                instance.close()
            with contextlib.suppress(RuntimeError):  # the loop is already closed at interpreter exit
                self._loop.call_soon_threadsafe(self._protocol.connection_lost, error)

    def is_closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        self._closing.set()

    def abort(self) -> None:
        self._closing.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._instance if name == "serial" else default


async def _open_rfc2217(
    settings: LineSettings, protocol: asyncio.Protocol, timeout: float
) -> tuple[asyncio.BaseTransport, asyncio.Future[BaseException | None]]:
    assert isinstance(protocol, _LineProtocol)
    loop = asyncio.get_running_loop()

    def connect() -> Any:
        import serial

        # timeout: how long read() blocks, so the thread notices close() promptly.
        return serial.serial_for_url(
            settings.port,
            baudrate=settings.baudrate,
            parity=settings.parity,
            bytesize=settings.bytesize,
            stopbits=settings.stopbits,
            timeout=_ThreadedSerialTransport.POLL_S,
        )

    opening = loop.run_in_executor(None, connect)
    try:
        instance = await asyncio.wait_for(asyncio.shield(opening), timeout)
    except BaseException:
        opening.add_done_callback(_close_opened)
        raise
    return _ThreadedSerialTransport(loop, protocol, instance), protocol.lost


def _close_opened(opening: asyncio.Future[Any]) -> None:
    """Close a serial instance whose open finished after we stopped waiting for it."""
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(Exception):
            opening.result().close()


async def close_line(
    transport: asyncio.BaseTransport,
    lost: asyncio.Future[BaseException | None],
    timeout: float = CLOSE_TIMEOUT_S,
) -> None:
    """Drop the line now (no flush: a wedged adapter could block a drain) and wait briefly for the fd."""
    with contextlib.suppress(Exception):
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(lost), timeout)


class LineReader:
    """Reads one meter line forever, reopening it when it fails. See the module docstring.

    Callbacks are synchronous and run on the event loop: `on_data(chunk)` for every chunk,
    `on_state(state, detail)` on each state change (detail: the reason for a retry, or None),
    `on_silent(silent)` from the idle watchdog. Exceptions in callbacks are logged, never fatal.

    Counters: `opens`, `failures` (failed opens and lost lines), `bytes_read`, `silence_reopens`,
    `callback_errors`; `last_data_monotonic` (clock time of the last chunk, None before the first),
    `last_error` (the last reason, user-facing), `settings` (the current or locked line settings).
    """

    def __init__(
        self,
        settings: LineSettings,
        on_data: Callable[[bytes], None],
        *,
        on_state: Callable[[ReaderState, str | None], None] | None = None,
        on_silent: Callable[[bool], None] | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
        silence_reopen_factor: float | None = 3.0,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        open_timeout: float = OPEN_TIMEOUT_S,
        candidates: Sequence[LineSettings] | None = None,
        new_validator: Callable[[], Validator] | None = None,
        probe_seconds: float = DEFAULT_PROBE_SECONDS,
        on_lock: Callable[[LineSettings], None] | None = None,
        decoded_frames: Callable[[], int] | None = None,
        redetect_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("backoff_initial must be positive and not above backoff_max")
        if candidates is not None and len(candidates) > 1 and new_validator is None:
            raise ValueError("auto-baud (several candidates) needs new_validator")
        self.settings = settings
        self._on_data = on_data
        self._on_state = on_state
        self._on_silent = on_silent
        self.idle_timeout = idle_timeout
        self.silence_reopen_after = (
            idle_timeout * silence_reopen_factor
            if idle_timeout is not None and silence_reopen_factor is not None
            else None
        )
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self._clock = clock
        # Auto-baud: probe these in turn until one validates; a socket has no framing to probe.
        self._candidates = list(candidates or ()) if not settings.is_socket else []
        self._new_validator = new_validator
        self.probe_seconds = probe_seconds
        self._probe_index = 0
        self._validator: Validator | None = None
        self._probe_buffer = bytearray()
        self.locked = len(self._candidates) <= 1
        if self._candidates:
            self.settings = self._candidates[0]
        self._on_lock = on_lock
        # Re-detection: only meaningful with candidates to go back to and a count to watch.
        self._decoded_frames = decoded_frames
        self.redetect_after = redetect_after if decoded_frames is not None and self._candidates else None
        self._frames_seen = -1  # decoded_frames() at the last check
        self._frames_moved_at = clock()  # when that count last changed (or the line was locked)
        self.redetects = 0

        self.state: ReaderState = "stopped"
        self.opens = 0
        self.failures = 0
        self.bytes_read = 0
        self.silence_reopens = 0
        self.callback_errors = 0
        self.last_data_monotonic: float | None = None
        self.last_error: str | None = None
        self.retry_delay = 0.0  # the current or last wait before a reopen
        self.silent = False
        self._session_bytes = 0
        self._started_at = clock()
        self._task: asyncio.Task[None] | None = None
        self._lock_event = asyncio.Event()  # set when auto-baud accepts a setting

    # ------------------------------------------------------------------------------------ control
    def start(self) -> asyncio.Task[None]:
        """Run the reader in a task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"amsd-reader {self.settings.port}")
        return self._task

    async def stop(self) -> None:
        """Stop reading and close the line; returns within about CLOSE_TIMEOUT_S at worst."""
        task = self._task
        if task is None or task.done():
            self._set_state("stopped", None)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def stats(self) -> dict[str, Any]:
        """Counters for diagnostics."""
        age = None if self.last_data_monotonic is None else round(self._clock() - self.last_data_monotonic, 3)
        return {
            "serial_state": self.state,
            "line": str(self.settings),
            "opens": self.opens,
            "failures": self.failures,
            "bytes_read": self.bytes_read,
            "silence_reopens": self.silence_reopens,
            "redetects": self.redetects,
            "retry_delay_s": self.retry_delay,
            "last_data_age_s": age,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------------------------ main loop
    async def run(self) -> None:
        """Open, read, reopen; until cancelled."""
        self._started_at = self._clock()
        watchdog = asyncio.create_task(self._watchdog(), name="amsd-reader-watchdog") if self.idle_timeout else None
        delay = self.backoff_initial
        transport: asyncio.BaseTransport | None = None
        lost: asyncio.Future[BaseException | None] | None = None
        try:
            while True:
                self._set_state("connecting", None)
                self._session_bytes = 0
                settings = self.settings
                if not self.locked:
                    self._validator = self._new_validator() if self._new_validator else None
                    self._probe_buffer.clear()
                try:
                    transport, lost = await open_line(settings, self._deliver, timeout=self.open_timeout)
                except Exception as exc:  # any open failure is retried; nothing here may kill the reader
                    reason = describe_error(exc, settings)
                else:
                    self.opens += 1
                    if self.locked:
                        log.info("line open: %s", settings)
                    else:
                        log.info("line open: %s (probing line settings)", settings)
                    self._set_state("open", None)
                    outcome = await self._serve(lost, settings)
                    await close_line(transport, lost)
                    transport = lost = None
                    if outcome is None:  # probe timed out without a frame: next setting right away
                        self._next_candidate()
                        continue
                    reason = outcome
                if self._session_bytes:
                    delay = self.backoff_initial
                self.failures += 1
                self.last_error = reason
                log.warning("line %s: %s; retrying in %.3g s", settings.port, reason, delay)
                self.retry_delay = delay
                self._set_state("waiting_retry", reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                if not self.locked and not self._session_bytes:
                    self._next_candidate()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if transport is not None and lost is not None:
                await close_line(transport, lost)
            self._set_state("stopped", None)

    async def _serve(self, lost: asyncio.Future[BaseException | None], settings: LineSettings) -> str | None:
        """Wait until the line ends; returns the reason, or None when a probe found nothing."""
        opened_at = self._clock()
        while True:
            deadline: float | None = None
            if not self.locked:
                deadline = opened_at + self.probe_seconds
            elif self.silence_reopen_after is not None:
                last = max(self.last_data_monotonic or opened_at, opened_at)
                deadline = last + self.silence_reopen_after
            redetect_at = self._redetect_due()
            if redetect_at is not None:
                deadline = redetect_at if deadline is None else min(deadline, redetect_at)
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            waiters: set[asyncio.Future[Any]] = {lost}
            lock_wait: asyncio.Future[Any] | None = None
            if not self.locked:
                lock_wait = asyncio.ensure_future(self._lock_event.wait())
                waiters.add(lock_wait)
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if lock_wait is not None:
                    lock_wait.cancel()
            if lost.done():
                return describe_error(lost.result(), settings)
            if lock_wait is not None and self.locked:
                continue  # just locked on this setting; keep reading it
            now = self._clock()
            if redetect_at is not None and now >= redetect_at:
                self._redetect_due()  # refresh the count before judging
                if self._should_redetect(now):
                    return self._start_redetect(now)
            if deadline is not None and now >= deadline:
                if not self.locked:
                    log.info("no valid frame on %s within %.3g s", settings, self.probe_seconds)
                    return None
                last = max(self.last_data_monotonic or opened_at, opened_at)
                if now - last >= (self.silence_reopen_after or 0.0):
                    self.silence_reopens += 1
                    return f"no data for {now - last:.0f} s; reopening the line (adapters can wedge silently)"

    # ------------------------------------------------------------------------------------ re-detection
    def _redetect_due(self) -> float | None:
        """When to look at the decoded-frame count next (None: not watching)."""
        if self.redetect_after is None or not self.locked:
            return None
        assert self._decoded_frames is not None
        count = self._decoded_frames()
        if count != self._frames_seen:
            self._frames_seen = count
            self._frames_moved_at = self._clock()
        # Checked at least every minute: the count can move without waking this task.
        return min(self._frames_moved_at + self.redetect_after, self._clock() + min(60.0, self.redetect_after))

    def _should_redetect(self, now: float) -> bool:
        # Bytes must still be arriving: a silent line is the silence watchdog's case, not a wrong setting.
        last = self.last_data_monotonic
        stale = now - self._frames_moved_at >= (self.redetect_after or 0.0)
        return stale and last is not None and last > self._frames_moved_at

    def _start_redetect(self, now: float) -> str:
        self.redetects += 1
        idle = now - self._frames_moved_at
        self.locked = False
        self._lock_event.clear()
        # Start over from the remembered/first candidate; the current one gets another chance in turn.
        self._probe_index = 0
        self.settings = self._candidates[0]
        self._frames_moved_at = now
        return f"bytes arrive but no frame decoded for {idle:.0f} s; detecting the line settings again"

    def _next_candidate(self) -> None:
        if self._candidates:
            self._probe_index = (self._probe_index + 1) % len(self._candidates)
            self.settings = self._candidates[self._probe_index]

    # ------------------------------------------------------------------------------------ data path
    def _deliver(self, data: bytes) -> None:
        # Called from the transport's read callback: must stay cheap and must not raise.
        size = len(data)
        self.bytes_read += size
        self._session_bytes += size
        self.last_data_monotonic = self._clock()
        if self.silent:
            self.silent = False
            self._notify_silent(False)
        if not self.locked:
            self._probe(data)
            return
        try:
            self._on_data(data)
        except Exception:
            self._callback_failed("on_data")

    def _probe(self, data: bytes) -> None:
        buffer = self._probe_buffer
        buffer += data
        if len(buffer) > PROBE_BUFFER_MAX:
            del buffer[: len(buffer) - PROBE_BUFFER_MAX]
        validator = self._validator
        try:
            accepted = validator is not None and validator(data)
        except Exception:
            self._callback_failed("validator")
            accepted = False
        if not accepted:
            return
        self.locked = True
        self._validator = None
        self._frames_moved_at = self._clock()
        self._frames_seen = -1
        log.info("line settings detected: %s", self.settings)
        if self._on_lock is not None:
            try:
                self._on_lock(self.settings)
            except Exception:
                self._callback_failed("on_lock")
        replay = bytes(buffer)
        buffer.clear()
        self._lock_event.set()
        try:
            self._on_data(replay)
        except Exception:
            self._callback_failed("on_data")

    def _callback_failed(self, name: str) -> None:
        self.callback_errors += 1
        # Powers of two only: a consumer that fails on every chunk must not flood the log.
        if self.callback_errors & (self.callback_errors - 1) == 0:
            log.exception("%s callback failed (%d times so far)", name, self.callback_errors)

    # ------------------------------------------------------------------------------------ watchdog
    async def _watchdog(self) -> None:
        idle = self.idle_timeout
        assert idle is not None
        while True:
            last = self.last_data_monotonic if self.last_data_monotonic is not None else self._started_at
            remaining = last + idle - self._clock()
            if remaining <= 0:
                if not self.silent:
                    self.silent = True
                    log.warning("line %s silent for %.3g s", self.settings.port, idle)
                    self._notify_silent(True)
                remaining = idle
            await asyncio.sleep(remaining)

    # ------------------------------------------------------------------------------------ callbacks
    def _notify_silent(self, silent: bool) -> None:
        if self._on_silent is not None:
            try:
                self._on_silent(silent)
            except Exception:
                self._callback_failed("on_silent")

    def _set_state(self, state: ReaderState, detail: str | None) -> None:
        if state == self.state and detail is None:
            return
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                self._callback_failed("on_state")


@dataclass(slots=True)
class ProbeAttempt:
    """What one line setting produced during `probe_line_settings`."""

    settings: LineSettings
    bytes_received: int = 0
    accepted: bool = False
    error: str | None = None


@dataclass(slots=True)
class ProbeReport:
    found: LineSettings | None
    attempts: list[ProbeAttempt] = field(default_factory=list)


class _ProbeListener:
    """Feeds one attempt's bytes to its validator and flags the first accepted frame."""

    def __init__(self, attempt: ProbeAttempt, validator: Validator) -> None:
        self.attempt = attempt
        self.validator = validator
        self.accepted = asyncio.Event()

    def deliver(self, data: bytes) -> None:
        attempt = self.attempt
        attempt.bytes_received += len(data)
        if attempt.accepted:
            return
        try:
            ok = self.validator(data)
        except Exception:
            log.exception("validator failed")
            ok = False
        if ok:
            attempt.accepted = True
            self.accepted.set()


async def probe_line_settings(
    port: str,
    new_validator: Callable[[], Validator],
    *,
    candidates: Sequence[LineSettings] | None = None,
    seconds: float = DEFAULT_PROBE_SECONDS,
    open_timeout: float = OPEN_TIMEOUT_S,
    on_attempt: Callable[[ProbeAttempt], None] | None = None,
    on_start: Callable[[ProbeAttempt], None] | None = None,
) -> ProbeReport:
    """Try each line setting once for up to `seconds`; stop at the first one the validator accepts.

    `on_start` is called before and `on_attempt` after each attempt (progress output; the attempt's
    `bytes_received` grows while it runs). Open errors are recorded in the attempt, not raised.
    """
    report = ProbeReport(found=None)
    for settings in candidates if candidates is not None else auto_candidates(port):
        attempt = ProbeAttempt(settings)
        listener = _ProbeListener(attempt, new_validator())
        accepted = listener.accepted
        if on_start is not None:
            on_start(attempt)
        try:
            transport, lost = await open_line(settings, listener.deliver, timeout=open_timeout)
        except Exception as exc:
            attempt.error = describe_error(exc, settings)
        else:
            accept_wait: asyncio.Future[Any] = asyncio.ensure_future(accepted.wait())
            waiters: set[asyncio.Future[Any]] = {accept_wait, lost}
            ended_by_line = False
            try:
                await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
                ended_by_line = lost.done()  # before our own close below ends it too
            finally:
                accept_wait.cancel()
                await close_line(transport, lost)
            if not attempt.accepted and ended_by_line:
                attempt.error = describe_error(lost.result(), settings)
        report.attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt)
        if attempt.accepted:
            report.found = settings
            break
    return report
