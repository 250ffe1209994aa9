"""`amsd capture` -> file -> `amsd simulate --replay` -> `amsd capture` again: byte-identical, timed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amsd.decoder import Decoder
from amsd.sim.simulate import serve_tcp
from amsd.tools import parse_capture
from tests.e2e.amsd_cli import REPO, run_amsd

pytestmark = pytest.mark.e2e

WAIT = 30.0


@contextlib.asynccontextmanager
async def replaying(path: Path, *extra: str) -> AsyncIterator[str]:
    """`amsd simulate --replay` on a free TCP port, waiting for a client; yields its address."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "amsd", "simulate", "--replay", str(path), "--tcp", "127.0.0.1:0", "--wait-client",
        *extra, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
        assert address.startswith("socket://"), address
        yield address
        await asyncio.wait_for(proc.wait(), WAIT)  # ends by itself once the capture is played
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_capture_replay_round_trip_is_byte_identical(tmp_path: Path) -> None:
    first = tmp_path / "first.amsdcap"
    second = tmp_path / "second.amsdcap"
    sim = await serve_tcp("kamstrup-no", speed=10, frames=3, wait_for_client=True)
    try:
        code, _out, err = await run_amsd("capture", sim.address, "-o", str(first), "--seconds", "3")
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)
    assert code == 0, err
    original = parse_capture(first.read_bytes())
    assert original.header["port"] == sim.address
    assert len(original.data) == sim.bytes_sent
    assert len(original.chunks) > 3  # timed pieces, not one blob

    async with replaying(first) as address:
        code, _out, err = await run_amsd("capture", address, "-o", str(second), "--seconds", "3")
    assert code == 0, err
    replayed = parse_capture(second.read_bytes())
    assert replayed.data == original.data

    # The original timing survives: the gaps between Kamstrup's pushes (1 s at speed 10) are kept.
    span = original.chunks[-1][0] - original.chunks[0][0]
    replay_span = replayed.chunks[-1][0] - replayed.chunks[0][0]
    assert span > 1.5
    assert replay_span == pytest.approx(span, abs=0.5)

    # And `amsd decode` reads the capture file.
    code, out, err = await run_amsd("decode", "--json", str(first))
    assert code == 0, err
    assert out.count('"event": "reading"') == 3
    decoder = Decoder()
    assert sum(e.event == "reading" for e in decoder.feed(replayed.data)) == 3


async def test_replay_speed_divides_the_timing(tmp_path: Path) -> None:
    chunks = [(0.0, b"\x01" * 8), (2.0, b"\x02" * 8), (4.0, b"\x03" * 8)]
    path = tmp_path / "timed.amsdcap"
    path.write_text("# amsd capture v1 port=/dev/x\n" + "".join(f"{t} {c.hex()}\n" for t, c in chunks))
    out = tmp_path / "again.amsdcap"
    async with replaying(path, "--speed", "8") as address:
        code, _out, err = await run_amsd("capture", address, "-o", str(out), "--seconds", "2")
    assert code == 0, err
    replayed = parse_capture(out.read_bytes())
    assert replayed.data == b"".join(c for _, c in chunks)
    assert replayed.chunks[-1][0] - replayed.chunks[0][0] == pytest.approx(0.5, abs=0.3)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"7EA0", "not an amsd capture"), (b"# amsd capture v1 port=/dev/x\nnope\n", "line 2")],
)
async def test_replay_rejects_what_is_not_a_capture(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    code, _out, err = await run_amsd("simulate", "--replay", str(path), "--tcp", "0")
    assert code == 2
    assert message in err


async def test_capture_never_contains_keys(tmp_path: Path) -> None:
    # The capture records the line, which carries ciphertext only; no option puts a key in the file.
    path = tmp_path / "enc.amsdcap"
    sim = await serve_tcp("sagemcom-at", speed=10, frames=2, wait_for_client=True)
    try:
        code, _out, err = await run_amsd("capture", sim.address, "-o", str(path), "--seconds", "1.5")
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)
    assert code == 0, err
    from amsd.sim.meters import DEMO_ENCRYPTION_KEY

    text = path.read_text().upper()
    assert DEMO_ENCRYPTION_KEY.hex().upper() not in text
    assert "KEY" not in text
