"""`amsd simulate` and its asyncio API: TCP and pty delivery, pacing, noise, line drops, the CLI.

Every wait is bounded (asyncio.wait_for / subprocess timeouts) and tests run the simulator fast
(high --speed or no pacing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from amsd.sim.simulate import SimServer, parse_hex_key, serve_pty, serve_tcp

try:
    from amsd.decoder import Decoder
except ImportError:  # pragma: no cover - the decoder is developed in parallel
    Decoder = None  # type: ignore[assignment,misc]

REPO = Path(__file__).resolve().parent.parent
WAIT = 10.0


def _host_port(server: SimServer) -> tuple[str, int]:
    host, _, port = server.address.removeprefix("socket://").rpartition(":")
    return host.strip("[]"), int(port)


async def _read_until_eof(reader: asyncio.StreamReader) -> tuple[bytes, list[float]]:
    """Everything until the server closes, and the arrival time of each piece."""
    data = bytearray()
    arrivals: list[float] = []
    while chunk := await reader.read(65536):
        data += chunk
        arrivals.append(time.monotonic())
    return bytes(data), arrivals


async def test_tcp_delivers_frames_in_order_and_counts() -> None:
    server = await serve_tcp("kamstrup-no", speed=1000.0, pacing=False, frames=5, wait_for_client=True)
    try:
        reader, writer = await asyncio.open_connection(*_host_port(server))
        data, _ = await asyncio.wait_for(_read_until_eof(reader), WAIT)
        await asyncio.wait_for(server.finished.wait(), WAIT)
        writer.close()
    finally:
        await server.stop()
    assert server.frames_sent == 5 and server.frames_corrupted == 0
    assert data == b"".join(record.data for record in server.records)
    report = server.report()
    assert report["frames_sent"] == 5 and len(report["frames"]) == 5
    assert report["frames"][0]["list"] == "list3"
    assert report["frames"][0]["expected"]["1-1:0.0.5.255"]["value"] == server.simulator.profile.meter_id


async def test_tcp_pacing_follows_baud_rate() -> None:
    # Kamstrup: 2400 8N1 = 240 bytes/s; at speed 8 a 302-byte list 3 takes about 0.16 s on the wire.
    server = await serve_tcp("kamstrup-no", speed=8.0, frames=1, wait_for_client=True)
    try:
        reader, writer = await asyncio.open_connection(*_host_port(server))
        started = time.monotonic()
        data, arrivals = await asyncio.wait_for(_read_until_eof(reader), WAIT)
        writer.close()
    finally:
        await server.stop()
    wire_time = len(data) * 10 / 2400 / 8
    elapsed = arrivals[-1] - started
    assert len(data) == len(server.records[0].data)
    assert wire_time * 0.5 <= elapsed <= wire_time * 4 + 0.3
    assert len(arrivals) >= 3  # partial frames, not one burst
    assert 16 <= server.chunk_size <= 64


async def test_cadence_scaled_by_speed() -> None:
    # dsmr5 sends every second; at speed 20 three telegrams need about 0.1 s (first at t = 0).
    server = await serve_tcp("dsmr5", speed=20.0, frames=3, wait_for_client=True)
    try:
        reader, writer = await asyncio.open_connection(*_host_port(server))
        started = time.monotonic()
        data, arrivals = await asyncio.wait_for(_read_until_eof(reader), WAIT)
        writer.close()
    finally:
        await server.stop()
    assert data.count(b"!") == 3
    assert 0.08 <= arrivals[-1] - started <= 1.5


async def test_several_clients_get_the_same_stream() -> None:
    server = await serve_tcp("aidon-no", speed=1000.0, pacing=False, frames=4, wait_for_client=True)
    try:
        first_reader, first_writer = await asyncio.open_connection(*_host_port(server))
        second_reader, second_writer = await asyncio.open_connection(*_host_port(server))
        first, second = await asyncio.wait_for(
            asyncio.gather(_read_until_eof(first_reader), _read_until_eof(second_reader)), WAIT
        )
        first_writer.close()
        second_writer.close()
    finally:
        await server.stop()
    expected = b"".join(record.data for record in server.records)
    # The second client may have connected after the first frame went out.
    assert first[0] == expected
    assert expected.endswith(second[0]) and second[0]


async def test_drop_every_closes_the_connection() -> None:
    server = await serve_tcp(
        "kaifa-no", speed=1000.0, pacing=False, frames=6, drop_every=2, wait_for_client=True
    )
    try:
        reader, writer = await asyncio.open_connection(*_host_port(server))
        data, _ = await asyncio.wait_for(_read_until_eof(reader), WAIT)
        writer.close()
        await asyncio.wait_for(server.wait_frames(6), WAIT)
    finally:
        await server.stop()
    assert data == server.records[0].data + server.records[1].data
    assert server.drops == 2  # after frames 2 and 4; not after the last one


# After an FCS error the decoder resynchronises inside the bad frame; the LLC + 0F APDU found there
# must never be decoded as a bare APDU (that would turn the damaged values into a reading).
@pytest.mark.parametrize("profile", ["lg-e450-ch", "sagemcom-at", "dsmr5", "kamstrup-no", "aidon-no", "kaifa-no"])
async def test_noise_corrupts_exactly_the_reported_frames(profile: str) -> None:
    server = await serve_tcp(
        profile, speed=1000.0, pacing=False, frames=30, noise=0.4, wait_for_client=True, seed=11
    )
    try:
        reader, writer = await asyncio.open_connection(*_host_port(server))
        data, _ = await asyncio.wait_for(_read_until_eof(reader), WAIT)
        writer.close()
    finally:
        await server.stop()
    assert 0 < server.frames_corrupted < 30 and server.garbage_bytes > 0
    encryption_key, authentication_key = _demo_keys()
    decoder = Decoder(encryption_key, None if profile == "dsmr5" else authentication_key)
    events = decoder.feed(data) + decoder.flush()
    readings = [e for e in events if e.event == "reading"]
    intact = [r for r in server.records if not r.corrupted]
    assert len(readings) == len(intact)
    for reading, record in zip(readings, intact, strict=True):
        assert reading.invocation_counter == record.invocation_counter
        for obis, want in record.expected.items():
            if isinstance(want.value, int | float):
                assert reading.values[obis].value == pytest.approx(want.value, abs=1e-9)


def _demo_keys() -> tuple[bytes, bytes]:
    from amsd.sim.meters import DEMO_AUTHENTICATION_KEY, DEMO_ENCRYPTION_KEY

    return DEMO_ENCRYPTION_KEY, DEMO_AUTHENTICATION_KEY


def _read_pty(path: str, size: int, timeout: float) -> bytes:
    """Read `size` bytes from a pty slave (raw mode is set by the simulator)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        import select

        while len(data) < size and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the master side closed
                    break
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
    return bytes(data)


async def test_pty_delivers_bytes_unchanged() -> None:
    # Binary data with bytes a cooked tty would eat (XON/XOFF, CR) must pass through untouched.
    server = await serve_pty("sagemcom-at", speed=1000.0, pacing=False, frames=4)
    try:
        await asyncio.wait_for(server.wait_frames(4), WAIT)
        expected = b"".join(record.data for record in server.records)
        data = await asyncio.to_thread(_read_pty, server.address, len(expected), WAIT)
        await asyncio.wait_for(server.finished.wait(), WAIT)
    finally:
        await server.stop()
    assert data == expected
    assert server.address.startswith("/dev/")


async def test_pty_drop_reopens_and_updates_link(tmp_path: Path) -> None:
    link = tmp_path / "meter"
    reopened: list[tuple[str, str]] = []

    def on_reopen(path: str) -> None:
        reopened.append((path, os.readlink(link)))

    server = await serve_pty(
        "aidon-no", speed=1000.0, pacing=False, frames=5, drop_every=2, link=str(link), on_reopen=on_reopen
    )
    try:
        first_path = server.address
        assert os.readlink(link) == first_path
        await asyncio.wait_for(server.finished.wait(), WAIT)
    finally:
        await server.stop()
    assert server.drops == 2 and len(reopened) == 2
    assert all(path == target for path, target in reopened)  # the link follows every reopen
    assert not link.is_symlink()  # removed when the simulator stops


def test_parse_hex_key() -> None:
    key = bytes(range(0x30, 0x40))
    assert parse_hex_key("303132333435363738393a3b3c3d3e3f", "--key") == key
    assert parse_hex_key("0x30 31:32 33-34 35 36 37 38 39 3A 3B 3C 3D 3E 3F", "--key") == key
    with pytest.raises(ValueError, match="--key") as info:
        parse_hex_key("00112233445566778899AABBCCDDEEFG", "--key")
    assert "AABB" not in str(info.value)  # never echo a secret
    with pytest.raises(ValueError, match="32 hex"):
        parse_hex_key("0011", "--key")


# ------------------------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "amsd", "simulate", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = WAIT) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def test_cli_tcp_report(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    process = _cli(
        "--profile", "dsmr5", "--tcp", "127.0.0.1:0", "--wait-client", "--no-pacing", "--speed", "1000",
        "--frames", "5", "--report", str(report_path), "--seed", "3",
    )  # fmt: skip
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        ready: dict[str, Any] = json.loads(process.stdout.readline())
        assert address.startswith("socket://127.0.0.1:") and ready["tcp"] == address
        assert (ready["baudrate"], ready["parity"]) == (115200, "N")
        host, _, port = address.removeprefix("socket://").rpartition(":")
        import socket

        received = bytearray()
        with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
            while chunk := sock.recv(65536):
                received += chunk
        _, stderr = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "5 frames sent" in stderr
    report = json.loads(report_path.read_text())
    assert report["frames_sent"] == 5 and report["frames_corrupted"] == 0
    assert bytes(received) == b"".join(bytes.fromhex(frame["hex"]) for frame in report["frames"])
    assert received.count(b"\r\n!") == 5


def test_cli_pty_sigterm_exits_cleanly() -> None:
    process = _cli("--profile", "aidon-no", "--speed", "5")
    try:
        assert process.stdout is not None
        path = process.stdout.readline().strip()
        ready = json.loads(process.stdout.readline())
        assert ready["pty"] == path and os.path.exists(path)
        assert ready["meter_parity"] == "E" and ready["parity"] == "N"  # a pty cannot do parity
        first = _read_pty(path, 20, WAIT)
        assert first[:1] == b"\x7e"
        process.send_signal(signal.SIGTERM)
        _, stderr = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "frames sent" in stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--profile", "nope"], "--profile"),
        (["--key", "1234"], "--key"),
        (["--tcp", "host:port"], "--tcp"),
        (["--noise", "2"], "--noise"),
    ],
)
def test_cli_usage_errors(args: list[str], needle: str) -> None:
    process = _cli(*args)
    _, stderr = _finish(process)
    assert process.returncode == 2
    assert needle in stderr


def test_cli_list_profiles() -> None:
    process = _cli("--list-profiles")
    stdout, _ = _finish(process)
    assert process.returncode == 0
    names = [line.split()[0] for line in stdout.splitlines()]
    assert names == ["aidon-no", "kaifa-no", "kamstrup-no", "lg-e450-ch", "dsmr5", "sagemcom-at"]


async def test_stop_is_idempotent() -> None:
    server = await serve_tcp("aidon-no", speed=1.0)
    await server.stop()
    await server.stop()
    with contextlib.suppress(OSError):
        _, writer = await asyncio.wait_for(asyncio.open_connection(*_host_port(server)), WAIT)
        writer.close()
        pytest.fail("the port should be closed")
