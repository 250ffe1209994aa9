"""LineReader against real lines: pseudo-terminals and TCP sockets on 127.0.0.1 (no mocked line)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amsd.reader import (
    LineReader,
    LineSettings,
    ProbeAttempt,
    ReaderState,
    auto_candidates,
    describe_error,
    probe_line_settings,
)

WAIT = 5.0  # upper bound for any single wait; the happy path takes milliseconds


# ------------------------------------------------------------------------------------ helpers
class Pty:
    """A pseudo-terminal whose master side plays the meter."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        # Closing both ends makes the reader's read fail (EIO) and removes /dev/pts/N.
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1

    def close(self) -> None:
        self.unplug()


@pytest.fixture
def pty_factory() -> Iterator[Callable[[], Pty]]:
    made: list[Pty] = []

    def make() -> Pty:
        pty = Pty()
        made.append(pty)
        return pty

    yield make
    for pty in made:
        pty.close()


@dataclass
class Recorder:
    """Collects reader callbacks and lets tests wait for conditions on them, without sleeping."""

    data: bytearray = field(default_factory=bytearray)
    states: list[tuple[ReaderState, str | None]] = field(default_factory=list)
    silent: list[bool] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_data(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    def on_state(self, state: ReaderState, detail: str | None) -> None:
        self.states.append((state, detail))
        self.changed.set()

    def on_silent(self, silent: bool) -> None:
        self.silent.append(silent)
        self.changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def count(self, state: ReaderState) -> int:
        return sum(1 for seen, _ in self.states if seen == state)


def make_reader(settings: LineSettings, rec: Recorder, **kwargs: object) -> LineReader:
    options: dict[str, object] = {"backoff_initial": 0.05, "backoff_max": 0.2, "idle_timeout": None}
    options.update(kwargs)
    return LineReader(
        settings,
        rec.on_data,
        on_state=rec.on_state,
        on_silent=rec.on_silent,
        **options,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(reader: LineReader) -> AsyncIterator[LineReader]:
    reader.start()
    try:
        yield reader
    finally:
        await asyncio.wait_for(reader.stop(), WAIT)


class TcpMeter:
    """A TCP server standing in for a ser2net/ESP bridge; each accepted client is queued."""

    def __init__(self) -> None:
        self.clients: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self.accepted: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"socket://127.0.0.1:{port}"

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(writer)
        await self.clients.put(writer)

    async def next_client(self) -> asyncio.StreamWriter:
        return await asyncio.wait_for(self.clients.get(), WAIT)

    async def close(self) -> None:
        for writer in self.accepted:
            await hang_up(writer)
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), WAIT)


@pytest.fixture
async def tcp_meter() -> AsyncIterator[TcpMeter]:
    meter = TcpMeter()
    await meter.start()
    yield meter
    await meter.close()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await asyncio.wait_for(writer.drain(), WAIT)


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), WAIT)


# ------------------------------------------------------------------------------------ settings
def test_line_settings_text() -> None:
    assert LineSettings("/dev/ttyUSB0", 2400, "E").line == "2400 8E1"
    assert str(LineSettings("/dev/ttyUSB0", 9600, "E", 7)) == "/dev/ttyUSB0 9600 7E1"
    assert str(LineSettings("socket://h:1", 2400, "E")) == "socket://h:1"
    assert LineSettings("socket://h:1").is_socket


@pytest.mark.parametrize(
    "kwargs",
    [{"port": ""}, {"baudrate": 0}, {"parity": "X"}, {"bytesize": 6}, {"stopbits": 3}],
)
def test_line_settings_reject_nonsense(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"port": "/dev/ttyUSB0"} | kwargs
    with pytest.raises(ValueError):
        LineSettings(**values)  # type: ignore[arg-type]


def test_auto_candidates_most_common_first() -> None:
    lines = [c.line for c in auto_candidates("/dev/ttyUSB0")]
    assert lines[:4] == ["2400 8E1", "2400 8N1", "115200 8N1", "9600 7E1"]
    assert len(set(lines)) == len(lines)
    assert [c.line for c in auto_candidates("socket://h:1")] == ["2400 8N1"]


def test_reader_rejects_auto_baud_without_validator() -> None:
    with pytest.raises(ValueError, match="new_validator"):
        LineReader(LineSettings("/dev/x"), lambda _: None, candidates=auto_candidates("/dev/x"))


# ------------------------------------------------------------------------------------ pty
async def test_pty_bytes_reach_on_data(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    payload = bytes(range(256)) * 8  # every byte value: raw mode must not eat XON/XOFF, CR or 0x7E
    async with running(make_reader(LineSettings(pty.path), rec)) as reader:
        await rec.until(lambda: reader.state == "open")
        pty.write(payload)
        await rec.until(lambda: len(rec.data) >= len(payload))
        assert bytes(rec.data) == payload
        assert reader.bytes_read == len(payload)
        assert reader.opens == 1
        assert reader.last_data_monotonic is not None
    assert reader.state == "stopped"
    assert rec.states[0] == ("connecting", None)
    assert rec.states[-1] == ("stopped", None)


async def test_pty_unplug_then_reappears_via_symlink(pty_factory: Callable[[], Pty], tmp_path: Path) -> None:
    link = tmp_path / "ttyMETER"
    first = pty_factory()
    link.symlink_to(first.path)
    rec = Recorder()
    async with running(make_reader(LineSettings(str(link)), rec)) as reader:
        await rec.until(lambda: reader.state == "open")
        first.write(b"before")
        await rec.until(lambda: rec.data == b"before")

        first.unplug()
        await rec.until(lambda: rec.count("waiting_retry") >= 2)  # lost, then the device is gone
        assert reader.failures >= 2
        assert reader.last_error is not None

        second = pty_factory()
        link.unlink()
        link.symlink_to(second.path)
        await rec.until(lambda: reader.state == "open" and reader.opens == 2)
        second.write(b"after")
        await rec.until(lambda: rec.data == b"beforeafter")


async def test_missing_device_waits_then_opens(pty_factory: Callable[[], Pty], tmp_path: Path) -> None:
    link = tmp_path / "ttyLATER"
    rec = Recorder()
    async with running(make_reader(LineSettings(str(link)), rec)) as reader:
        await rec.until(lambda: rec.count("waiting_retry") >= 3)
        assert reader.opens == 0
        assert reader.last_error == "device not found"
        details = [detail for state, detail in rec.states if state == "waiting_retry"]
        assert all(detail == "device not found" for detail in details)
        pty = pty_factory()
        link.symlink_to(pty.path)
        await rec.until(lambda: reader.state == "open")
        pty.write(b"hello")
        await rec.until(lambda: rec.data == b"hello")


async def test_backoff_doubles_to_the_cap(tmp_path: Path) -> None:
    rec = Recorder()
    stamps: list[float] = []
    delays: list[float] = []

    def on_state(state: ReaderState, detail: str | None) -> None:
        if state == "waiting_retry":
            stamps.append(time.monotonic())
            delays.append(reader.retry_delay)
        rec.on_state(state, detail)

    reader = LineReader(
        LineSettings(str(tmp_path / "absent")),
        rec.on_data,
        on_state=on_state,
        backoff_initial=0.02,
        backoff_max=0.08,
        idle_timeout=None,
    )
    async with running(reader):
        await rec.until(lambda: len(stamps) >= 6)
    assert delays[:6] == [0.02, 0.04, 0.08, 0.08, 0.08, 0.08]
    # The waits really happen (lower bounds only: a loaded machine may be slower, never faster).
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False))


async def test_pty_with_parity_is_a_clear_error_and_retried(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    async with running(make_reader(LineSettings(pty.path, 2400, "E"), rec)) as reader:
        await rec.until(lambda: rec.count("waiting_retry") >= 2)
        assert reader.opens == 0
        assert reader.last_error is not None
        assert "2400 8E1" in reader.last_error
        assert "pseudo-terminal" in reader.last_error


async def test_idle_watchdog_fires_and_clears(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    reader = make_reader(LineSettings(pty.path), rec, idle_timeout=0.15, silence_reopen_factor=None)
    async with running(reader):
        await rec.until(lambda: rec.silent == [True])
        assert reader.silent
        pty.write(b"x")
        await rec.until(lambda: rec.silent == [True, False])
        assert not reader.silent
        await rec.until(lambda: rec.silent == [True, False, True])
        assert reader.opens == 1  # silence alone does not reopen when disabled


async def test_long_silence_reopens_the_line(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    reader = make_reader(LineSettings(pty.path), rec, idle_timeout=0.1, silence_reopen_factor=2.0)
    async with running(reader):
        await rec.until(lambda: reader.opens >= 2)
        assert reader.silence_reopens >= 1
        assert reader.last_error is not None and "no data" in reader.last_error
        await rec.until(lambda: reader.state == "open")
        pty.write(b"still here")
        await rec.until(lambda: rec.data == b"still here")


async def test_stop_is_fast_and_closes_the_port(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    reader = make_reader(LineSettings(pty.path), rec)
    reader.start()
    await rec.until(lambda: reader.state == "open")
    started = time.monotonic()
    await asyncio.wait_for(reader.stop(), WAIT)
    assert time.monotonic() - started < 1.0
    assert reader.state == "stopped"
    # The port is free again: exclusive open by a second reader succeeds.
    rec2 = Recorder()
    async with running(make_reader(LineSettings(pty.path), rec2)) as second:
        await rec2.until(lambda: second.state == "open")


async def test_second_reader_on_same_tty_is_refused(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec1, rec2 = Recorder(), Recorder()
    async with running(make_reader(LineSettings(pty.path), rec1)) as first:
        await rec1.until(lambda: first.state == "open")
        async with running(make_reader(LineSettings(pty.path), rec2)) as second:
            await rec2.until(lambda: rec2.count("waiting_retry") >= 1)
            assert second.opens == 0
            assert second.last_error is not None and "lock" in second.last_error.lower()


async def test_stop_while_waiting_retry_is_fast(tmp_path: Path) -> None:
    rec = Recorder()
    reader = make_reader(LineSettings(str(tmp_path / "absent")), rec, backoff_initial=30.0, backoff_max=30.0)
    reader.start()
    await rec.until(lambda: reader.state == "waiting_retry")
    started = time.monotonic()
    await asyncio.wait_for(reader.stop(), WAIT)
    assert time.monotonic() - started < 1.0


async def test_callback_errors_do_not_stop_reading(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    rec = Recorder()
    calls = 0

    def flaky(chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            rec.changed.set()
            raise RuntimeError("consumer bug")
        rec.on_data(chunk)

    reader = LineReader(LineSettings(pty.path), flaky, on_state=rec.on_state, idle_timeout=None)
    async with running(reader):
        await rec.until(lambda: reader.state == "open")
        pty.write(b"first")
        await rec.until(lambda: reader.callback_errors == 1)
        pty.write(b"second")
        await rec.until(lambda: rec.data.endswith(b"second"))
        assert reader.callback_errors == 1
        assert reader.opens == 1


# ------------------------------------------------------------------------------------ socket://
async def test_socket_delivers_bytes(tcp_meter: TcpMeter) -> None:
    rec = Recorder()
    async with running(make_reader(LineSettings(tcp_meter.url), rec)) as reader:
        client = await tcp_meter.next_client()
        await send(client, b"\x7e\xa0\x01" * 1000)
        await rec.until(lambda: len(rec.data) == 3000)
        assert reader.state == "open"
        await hang_up(client)


async def test_socket_8e1_settings_are_accepted(tcp_meter: TcpMeter) -> None:
    # pyserial ignores framing for socket:// (the bridge owns the line), so 8E1/7E1 must just work.
    rec = Recorder()
    async with running(make_reader(LineSettings(tcp_meter.url, 2400, "E"), rec)):
        client = await tcp_meter.next_client()
        await send(client, b"parity-e")
        await rec.until(lambda: rec.data == b"parity-e")
        await hang_up(client)
    rec7 = Recorder()
    async with running(make_reader(LineSettings(tcp_meter.url, 9600, "E", 7), rec7)):
        client = await tcp_meter.next_client()
        await send(client, b"7e1")
        await rec7.until(lambda: rec7.data == b"7e1")
        await hang_up(client)


async def test_socket_eof_reconnects_and_resumes(tcp_meter: TcpMeter) -> None:
    rec = Recorder()
    async with running(make_reader(LineSettings(tcp_meter.url), rec)) as reader:
        first = await tcp_meter.next_client()
        await send(first, b"one")
        await rec.until(lambda: rec.data == b"one")
        await hang_up(first)
        await rec.until(lambda: rec.count("waiting_retry") >= 1)
        assert reader.last_error is not None and "EOF" in reader.last_error
        second = await tcp_meter.next_client()
        await rec.until(lambda: reader.opens == 2 and reader.state == "open")
        await send(second, b"two")
        await rec.until(lambda: rec.data == b"onetwo")
        await hang_up(second)


async def test_socket_refused_retries_until_bridge_starts() -> None:
    # Find a free port, then start the bridge on it only after the reader has failed a few times.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    rec = Recorder()
    async with running(make_reader(LineSettings(f"socket://127.0.0.1:{port}"), rec)) as reader:
        await rec.until(lambda: rec.count("waiting_retry") >= 2)
        assert reader.last_error is not None and "refused" in reader.last_error.lower()
        clients: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await clients.put(w)

        server = await asyncio.start_server(on_client, "127.0.0.1", port)
        try:
            client = await asyncio.wait_for(clients.get(), WAIT)
            try:
                await send(client, b"up")
                await rec.until(lambda: rec.data == b"up")
            finally:
                await hang_up(client)
        finally:
            server.close()
            await server.wait_closed()


# ------------------------------------------------------------------------------------ auto-baud
def accept_marker(marker: bytes) -> Callable[[], Callable[[bytes], bool]]:
    """A validator factory: accepts once `marker` has been seen (even across chunk boundaries)."""

    def new() -> Callable[[bytes], bool]:
        seen = bytearray()

        def validate(chunk: bytes) -> bool:
            seen.extend(chunk)
            return marker in seen

        return validate

    return new


async def test_auto_baud_locks_and_replays(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    candidates = [
        LineSettings(pty.path, 2400, "E"),  # a pty refuses parity: skipped after the open error
        LineSettings(pty.path, 9600, "N"),  # opens, sees only junk, probe times out
        LineSettings(pty.path, 2400, "N"),  # sees the frame: locked
    ]
    rec = Recorder()
    reader = make_reader(
        candidates[0], rec, candidates=candidates, new_validator=accept_marker(b"GOOD"), probe_seconds=0.3
    )
    async with running(reader):
        await rec.until(lambda: reader.state == "open" and reader.settings == candidates[1])
        pty.write(b"junk")
        await rec.until(lambda: reader.settings == candidates[2] and reader.state == "open")
        assert not reader.locked
        assert rec.data == b""  # nothing is delivered while probing
        pty.write(b"GO")
        pty.write(b"OD-frame")
        await rec.until(lambda: reader.locked)
        await rec.until(lambda: rec.data == b"GOOD-frame")  # the proving bytes are replayed
        assert reader.settings == candidates[2]
        pty.write(b"-live")
        await rec.until(lambda: rec.data == b"GOOD-frame-live")
        assert reader.opens == 2


async def test_auto_baud_keeps_locked_setting_after_unplug(
    pty_factory: Callable[[], Pty], tmp_path: Path
) -> None:
    link = tmp_path / "tty"
    first = pty_factory()
    link.symlink_to(first.path)
    candidates = [LineSettings(str(link), 2400, "E"), LineSettings(str(link), 115200, "N")]
    rec = Recorder()
    reader = make_reader(
        candidates[0], rec, candidates=candidates, new_validator=accept_marker(b"OK"), probe_seconds=0.3
    )
    async with running(reader):
        await rec.until(lambda: reader.state == "open")
        first.write(b"OK")
        await rec.until(lambda: reader.locked)
        first.unplug()
        await rec.until(lambda: reader.state == "waiting_retry")
        second = pty_factory()
        link.unlink()
        link.symlink_to(second.path)
        await rec.until(lambda: reader.state == "open")
        assert reader.settings == candidates[1]
        second.write(b"more")
        await rec.until(lambda: rec.data == b"OKmore")


async def test_probe_line_settings_reports_every_attempt(pty_factory: Callable[[], Pty]) -> None:
    pty = pty_factory()
    candidates = [LineSettings(pty.path, 2400, "E"), LineSettings(pty.path, 115200, "N")]
    attempts: list[ProbeAttempt] = []
    opened = asyncio.Event()

    async def meter() -> None:
        await opened.wait()
        # A meter pushes repeatedly; one of the pushes falls inside the listening window.
        while True:
            with contextlib.suppress(BlockingIOError, OSError):
                pty.write(b"xxOKxx")
            await asyncio.sleep(0.02)

    def on_attempt(attempt: ProbeAttempt) -> None:
        attempts.append(attempt)
        opened.set()

    task = asyncio.create_task(meter())
    try:
        report = await asyncio.wait_for(
            probe_line_settings(
                pty.path, accept_marker(b"OK"), candidates=candidates, seconds=2.0, on_attempt=on_attempt
            ),
            WAIT,
        )
    finally:
        task.cancel()
    assert report.found == candidates[1]
    assert [a.settings for a in report.attempts] == candidates
    assert report.attempts[0].error is not None and "pseudo-terminal" in report.attempts[0].error
    assert report.attempts[1].accepted and report.attempts[1].bytes_received > 0


async def test_probe_line_settings_nothing_found(tcp_meter: TcpMeter) -> None:
    async def serve_noise() -> None:
        client = await tcp_meter.next_client()
        await send(client, b"\x00\xff" * 50)

    task = asyncio.create_task(serve_noise())
    try:
        report = await asyncio.wait_for(
            probe_line_settings(tcp_meter.url, accept_marker(b"OK"), seconds=0.3), WAIT
        )
    finally:
        await asyncio.wait_for(task, WAIT)
    assert report.found is None
    assert len(report.attempts) == 1
    assert report.attempts[0].bytes_received == 100


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (FileNotFoundError(2, "No such file or directory"), "device not found"),
        (PermissionError(13, "Permission denied"), "dialout"),
        (TimeoutError(), "timed out"),
        (None, "line closed"),
    ],
)
def test_describe_error(exc: BaseException | None, expected: str) -> None:
    assert expected in describe_error(exc, LineSettings("/dev/ttyUSB0"))


def test_describe_eof_on_socket() -> None:
    assert "EOF" in describe_error(None, LineSettings("socket://h:1"))
