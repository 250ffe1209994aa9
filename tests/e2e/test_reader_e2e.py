"""The line reader with the real decoder and the meter simulator over real ptys and TCP, plus the
`amsd detect` and `amsd capture` commands as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from amsd.decoder import Decoder, Reading
from amsd.reader import LineReader, LineSettings, auto_candidates
from amsd.sim.simulate import SimServer, serve_pty, serve_tcp
from amsd.tools import parse_capture
from tests.e2e.amsd_cli import run_amsd, scripted_line

pytestmark = pytest.mark.e2e

WAIT = 20.0  # generous: only a failing test waits this long


class Collector:
    """Decodes what the reader delivers and signals each reading."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.readings: list[Reading] = []
        self.chunks = 0
        self.changed = asyncio.Event()

    def on_data(self, chunk: bytes) -> None:
        self.chunks += 1
        for event in self.decoder.feed(chunk):
            if isinstance(event, Reading):
                self.readings.append(event)
        self.changed.set()

    def on_state(self, state: str, detail: str | None) -> None:
        self.changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def simulator(server: SimServer) -> AsyncIterator[SimServer]:
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), WAIT)


@contextlib.asynccontextmanager
async def reading(reader: LineReader) -> AsyncIterator[LineReader]:
    reader.start()
    try:
        yield reader
    finally:
        await asyncio.wait_for(reader.stop(), WAIT)


def decoder_validator() -> Callable[[bytes], bool]:
    decoder = Decoder()

    def validate(chunk: bytes) -> bool:
        return any(event.event == "reading" for event in decoder.feed(chunk))

    return validate


async def test_pty_meter_readings_survive_line_drops(tmp_path: Path) -> None:
    link = tmp_path / "ttyAMS"
    sim = await serve_pty("aidon-no", speed=20, drop_every=3, link=str(link))
    async with simulator(sim):
        got = Collector()
        reader = LineReader(
            LineSettings(str(link)),
            got.on_data,
            on_state=got.on_state,
            backoff_initial=0.05,
            backoff_max=0.1,
            idle_timeout=None,
        )
        async with reading(reader):
            await got.until(lambda: reader.opens >= 3 and len(got.readings) >= 6)
            assert reader.failures >= 2  # each drop was seen and recovered from
            assert sim.drops >= 2
            assert all(r.values for r in got.readings)


async def test_tcp_bridge_8e1_with_decoder() -> None:
    sim = await serve_tcp("kamstrup-no", speed=40)
    async with simulator(sim):
        got = Collector()
        settings = LineSettings(sim.address, 2400, "E")  # the bridge owns the framing; ignored here
        reader = LineReader(settings, got.on_data, on_state=got.on_state, idle_timeout=None)
        async with reading(reader):
            await got.until(lambda: len(got.readings) >= 3)
            assert {r.model for r in got.readings} != set()
            assert reader.opens == 1


async def test_auto_baud_with_decoder_replays_proving_frame(tmp_path: Path) -> None:
    link = tmp_path / "ttyAUTO"
    sim = await serve_pty("kamstrup-no", speed=40, link=str(link))
    async with simulator(sim):
        got = Collector()
        readings_at_lock: list[int] = []

        def on_data(chunk: bytes) -> None:
            got.on_data(chunk)
            if not readings_at_lock:
                readings_at_lock.append(len(got.readings))

        candidates = auto_candidates(str(link))
        reader = LineReader(
            candidates[0],
            on_data,
            on_state=got.on_state,
            candidates=candidates,
            new_validator=decoder_validator,
            probe_seconds=10.0,  # frames come every 0.25 s; never rotate past 2400 8N1 on a busy machine
            backoff_initial=0.05,
            idle_timeout=None,
        )
        async with reading(reader):
            await got.until(lambda: len(got.readings) >= 3)
        # A pty refuses 2400 8E1, so the next candidate (2400 8N1) must have been chosen...
        assert reader.locked
        assert reader.settings.line == "2400 8N1"
        # ...and the first delivery (the replay) already held the frame that proved the setting.
        assert readings_at_lock[0] >= 1


async def test_idle_watchdog_with_stopped_meter(tmp_path: Path) -> None:
    link = tmp_path / "ttyIDLE"
    sim = await serve_pty("aidon-no", speed=20, frames=2, link=str(link))
    async with simulator(sim):
        got = Collector()
        silent: list[bool] = []

        def on_silent(flag: bool) -> None:
            silent.append(flag)
            got.changed.set()

        reader = LineReader(
            LineSettings(str(link)),
            got.on_data,
            on_silent=on_silent,
            idle_timeout=0.5,
            silence_reopen_factor=None,
            backoff_initial=0.05,
        )
        async with reading(reader):
            await got.until(lambda: len(got.readings) >= 1)
            await got.until(lambda: silent[-1:] == [True])


# ------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("aidon-no", ["HDLC", "2400 8N1"]),
        ("sagemcom-at", ["M-Bus", "needs encryption_key"]),
        ("dsmr5", ["DSMR"]),
    ],
)
async def test_detect_command_on_pty(tmp_path: Path, profile: str, expected: list[str]) -> None:
    link = tmp_path / "ttyDETECT"
    sim = await serve_pty(profile, speed=10, link=str(link))
    async with simulator(sim):
        code, out, err = await run_amsd("detect", str(link), "--seconds", "5")
    assert code == 0, out + err
    assert "Found:" in out
    for text in expected:
        assert text in out
    assert "pseudo-terminal" in err  # the refused 8E1 attempt is reported, not fatal
    assert "[[meters]]" in out


async def test_detect_command_nothing_found_gives_hints() -> None:
    async def noise(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(bytes(range(256)) * 4)
            await writer.drain()
            await reader.read()  # hold the line open until the client hangs up
        writer.close()

    async with scripted_line(noise) as address:
        code, out, _err = await run_amsd("detect", address, "--seconds", "0.5")
    assert code == 1
    assert "No valid frame found" in out
    assert "INVERTED" in out
    assert "bridge" in out


async def test_capture_command_records_decodable_bytes(tmp_path: Path) -> None:
    sim = await serve_tcp("aidon-no", speed=20)
    output = tmp_path / "capture.txt"
    async with simulator(sim):
        code, _out, err = await run_amsd("capture", sim.address, "-o", str(output), "--seconds", "1.5")
    assert code == 0, err
    data = parse_capture(output.read_bytes()).data
    assert f"Wrote {len(data)} bytes" in err
    decoder = Decoder()
    events = decoder.feed(data) + decoder.flush()
    assert sum(1 for event in events if event.event == "reading") >= 2


async def test_capture_command_missing_device_fails(tmp_path: Path) -> None:
    output = tmp_path / "none.bin"
    code, _out, err = await run_amsd("capture", str(tmp_path / "absent"), "-o", str(output), "--seconds", "0.3")
    assert code == 1
    assert "device not found" in err
    assert "Nothing received" in err
