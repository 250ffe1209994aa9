"""Detection against the meter simulator on real lines.

- rfc2217://: an RFC 2217 bridge (tests/uart_bridge.py) serves the simulator through a UART model,
  so every line setting the detector tries yields what a real adapter would: garbage for the wrong
  ones. This covers every profile at its own setting and each of the seven detect settings.
- pty: 8N1 only (a pty refuses parity) and without a baud rate: the format and meter are checked.
- socket://: a raw TCP bridge carries no framing; detect reports the format and meter and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from amsd.reader import LineSettings, load_line_settings
from amsd.runconfig import MeterSettings
from amsd.sim.simulate import SimServer, serve_pty, serve_tcp
from amsd.tools import detect_line, line_state_path, meter_line_reader
from tests.e2e.amsd_cli import run_amsd, scripted_line
from tests.uart_bridge import Framing, Rfc2217UartBridge

pytestmark = [
    pytest.mark.e2e,
    # pyserial 3.5's RFC 2217 client still calls Thread.setDaemon/setName.
    pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning"),
]

WAIT = 30.0
SPEED = 20.0  # push cycles / 20: Kamstrup's 10 s become 0.5 s
PROBE_S = 1.2  # per setting: more than one push cycle plus a frame at the simulated speed


@contextlib.asynccontextmanager
async def simulated(profile: str, **kwargs: Any) -> AsyncIterator[SimServer]:
    server = await serve_tcp(profile, speed=SPEED, **kwargs)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), WAIT)


# Each profile at its own line setting, then the detect settings no profile uses, with content
# that fits them (7 data bits need DSMR text).
RFC2217_CASES = [
    ("aidon-no", "2400 8E1", "HDLC"),
    ("kaifa-no", "2400 8E1", "HDLC"),
    ("kamstrup-no", "2400 8N1", "HDLC"),
    ("lg-e450-ch", "2400 8E1", "HDLC"),
    ("dsmr5", "115200 8N1", "DSMR"),
    ("sagemcom-at", "2400 8E1", "M-Bus"),
    ("dsmr5", "9600 7E1", "DSMR"),
    ("kaifa-no", "9600 8N1", "HDLC"),
    ("aidon-no", "38400 8N1", "HDLC"),
    ("dsmr5", "115200 7E1", "DSMR"),
]


@pytest.mark.parametrize(("profile", "line", "fmt"), RFC2217_CASES, ids=[f"{p}-{line}" for p, line, _ in RFC2217_CASES])
async def test_detect_over_rfc2217_finds_the_meter_setting(profile: str, line: str, fmt: str) -> None:
    async with simulated(profile) as sim, Rfc2217UartBridge(sim.address, Framing.parse(line)) as bridge:
        err = io.StringIO()
        settings, finding, attempts = await asyncio.wait_for(
            detect_line(bridge.address, seconds=PROBE_S, err=err), WAIT * 2
        )
    assert settings is not None and finding is not None, err.getvalue()
    assert settings.line == line
    assert fmt in finding.frame_format
    # Every setting before the right one was really tried on the bridge, and rejected.
    assert [a.settings.line for a in attempts][-1] == line
    assert not any(a.accepted for a in attempts[:-1])
    if sim.simulator.encrypted:
        assert finding.needs_key and finding.system_title
    else:
        assert finding.values > 0


async def test_detect_command_over_rfc2217_prints_block_with_line_settings() -> None:
    async with simulated("kamstrup-no") as sim, Rfc2217UartBridge(sim.address, Framing.parse("2400 8N1")) as bridge:
        code, out, err = await run_amsd("detect", bridge.address, "--seconds", str(PROBE_S))
    assert code == 0, out + err
    assert f'port = "{bridge.address}"' in out
    assert "baudrate = 2400" in out
    assert 'parity = "N"' in out
    assert "2400 8E1" in err  # the rejected first setting is in the summary


@pytest.mark.parametrize("profile", ["kamstrup-no", "dsmr5"])
async def test_detect_on_pty_8n1_profiles(tmp_path: Path, profile: str) -> None:
    link = tmp_path / "ttyMETER"
    sim = await serve_pty(profile, speed=SPEED, link=str(link))
    try:
        err = io.StringIO()
        settings, finding, attempts = await asyncio.wait_for(detect_line(str(link), seconds=PROBE_S, err=err), WAIT)
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)
    assert settings is not None and finding is not None, err.getvalue()
    # A pty has no parity (8E1 is refused) and no baud rate: the first 8N1 setting reads it.
    assert settings.line == "2400 8N1"
    assert attempts[0].error is not None and "pseudo-terminal" in attempts[0].error
    assert finding.meter_id == sim.simulator.profile.meter_id


@pytest.mark.parametrize("profile", ["aidon-no", "kaifa-no", "kamstrup-no", "lg-e450-ch", "dsmr5", "sagemcom-at"])
async def test_detect_over_socket_reports_format_and_meter(profile: str) -> None:
    async with simulated(profile) as sim:
        err = io.StringIO()
        settings, finding, attempts = await asyncio.wait_for(
            detect_line(sim.address, seconds=PROBE_S * 2, err=err), WAIT
        )
    assert settings is not None and finding is not None, err.getvalue()
    assert len(attempts) == 1  # nothing to probe: the bridge owns the framing
    assert "set on the bridge" in err.getvalue() or "raw TCP bridge" in err.getvalue()
    assert finding.system_title if finding.encrypted else finding.values > 0
    assert finding.meter_id in (None, sim.simulator.profile.meter_id)  # short lists carry no id


async def test_detect_command_socket_block_has_no_line_settings() -> None:
    async with simulated("sagemcom-at") as sim:
        code, out, err = await run_amsd("detect", sim.address, "--seconds", "3")
    assert code == 0, out + err
    assert "set on the bridge" in out
    assert "baudrate =" not in out
    assert "encryption_key =" in out
    assert "system title" in out
    assert "grid operator" in out


async def test_detect_timeout_message_and_exit_code() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with scripted_line(silent) as address:
        code, out, err = await run_amsd("detect", address, "--seconds", "0.4")
    assert code == 1
    assert f"No valid frame found on {address}: tried 1 line setting(s) for 0.4 s each" in out
    assert "no bytes arrived at all" in out
    assert "Traceback" not in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_is_live_on_a_terminal_only(tmp_path: Path) -> None:
    async with simulated("kamstrup-no") as sim, Rfc2217UartBridge(sim.address, Framing.parse("2400 8N1")) as bridge:
        terminal, log = _Terminal(), io.StringIO()
        await asyncio.wait_for(detect_line(bridge.address, seconds=PROBE_S, err=terminal), WAIT)
        await asyncio.wait_for(detect_line(bridge.address, seconds=PROBE_S, err=log), WAIT)
    assert "\r" in terminal.getvalue() and "[1/7] 2400 8E1" in terminal.getvalue()
    assert "\r" not in log.getvalue() and "\033" not in log.getvalue()
    assert "2400 8N1" in log.getvalue()


# ------------------------------------------------------------------------------------ daemon side
class _Pipeline:
    """What meter_line_reader needs from MeterPipeline: callbacks and the decoded-frame counters."""

    def __init__(self) -> None:
        from amsd.decoder import Decoder

        self.decoder = Decoder()
        self.counters = {"frames_ok": 0, "decrypt_errors": 0}
        self.changed = asyncio.Event()

    def on_data(self, chunk: bytes) -> None:
        for event in self.decoder.feed(chunk):
            if event.event == "reading":
                self.counters["frames_ok"] += 1
        self.changed.set()

    def on_state(self, state: str, detail: str | None) -> None:
        self.changed.set()

    def on_silent(self, silent: bool) -> None:
        pass


def _meter(port: str, **extra: Any) -> MeterSettings:
    from amsd.config import AmsdConfig, MeterConfig

    return AmsdConfig(meters=[MeterConfig(name="house", port=port, baudrate="auto", **extra)]).for_run().meters[0]


async def _until(pipeline: _Pipeline, condition: Any) -> None:
    async def wait() -> None:
        while not condition():
            pipeline.changed.clear()
            await pipeline.changed.wait()

    await asyncio.wait_for(wait(), WAIT)


async def test_auto_baud_detects_persists_and_reuses(tmp_path: Path) -> None:
    async with simulated("kamstrup-no") as sim, Rfc2217UartBridge(sim.address, Framing.parse("2400 8N1")) as bridge:
        pipeline = _Pipeline()
        meter = _meter(bridge.address)
        reader = meter_line_reader(meter, pipeline, tmp_path)  # type: ignore[arg-type]
        reader.probe_seconds = PROBE_S
        reader.start()
        try:
            await _until(pipeline, lambda: pipeline.counters["frames_ok"] >= 2)
        finally:
            await reader.stop()
        assert reader.settings.line == "2400 8N1"
        path = line_state_path(tmp_path, "house")
        assert load_line_settings(path, bridge.address) == LineSettings(bridge.address, 2400, "N")

        # Next start: the remembered setting is tried (and verified) first.
        seen = len(bridge.settings_seen)
        again = _Pipeline()
        reader = meter_line_reader(meter, again, tmp_path)  # type: ignore[arg-type]
        reader.probe_seconds = PROBE_S
        assert reader.settings.line == "2400 8N1"
        reader.start()
        try:
            await _until(again, lambda: again.counters["frames_ok"] >= 1)
        finally:
            await reader.stop()
        assert Framing.parse("2400 8E1") not in bridge.settings_seen[seen:]


async def test_auto_baud_redetects_when_frames_stop_decoding(tmp_path: Path) -> None:
    # The meter is swapped for one with other line settings: bytes keep coming, frames stop.
    async with simulated("kamstrup-no") as sim:
        bridge = await Rfc2217UartBridge(sim.address, Framing.parse("2400 8E1")).start()
        try:
            pipeline = _Pipeline()
            meter = _meter(bridge.address, redetect_after_s=30)
            reader = meter_line_reader(meter, pipeline, tmp_path)  # type: ignore[arg-type]
            reader.probe_seconds = PROBE_S
            reader.redetect_after = 1.0  # the config floor is 30 s; the test cannot wait that long
            reader.start()
            try:
                await _until(pipeline, lambda: pipeline.counters["frames_ok"] >= 1)
                assert reader.settings.line == "2400 8E1"
                bridge.meter = Framing.parse("2400 8N1")  # new meter, same port (8E1 reads it garbled)
                await _until(
                    pipeline, lambda: reader.redetects >= 1 and reader.settings.line == "2400 8N1" and reader.locked
                )
                before = pipeline.counters["frames_ok"]
                await _until(pipeline, lambda: pipeline.counters["frames_ok"] > before)
            finally:
                await reader.stop()
        finally:
            await bridge.stop()
    saved = load_line_settings(line_state_path(tmp_path, "house"), bridge.address)
    assert saved is not None and saved.line == "2400 8N1"
