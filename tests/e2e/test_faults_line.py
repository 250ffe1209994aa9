"""Fault injection, line side (issue 4, scenarios 3, 4 and 5): line drops on a pty and a TCP bridge,
noise/truncation/bit flips with exact accounting, and a wrong key. `amsd run` is a real process, the
broker a real Mosquitto, and every amsd log is scanned for the configured secrets (scenario 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amsd.sim.meters import MeterSimulator, SimFrame
from amsd.sim.simulate import serve_pty, serve_tcp
from tests.e2e.faults_common import (
    SESSION_SCAN,
    WAIT,
    AmsdProcess,
    SecretScan,
    published_sequence,
    sequence_of,
    time_key,
    timed_listener,
    write_config,
)
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

STATE = "amsd/m/state"
RAW = "amsd/m/raw"
RESUME_LIMIT_S = 2.0  # issue 4: reading resumes within 2 s of the line returning
DROPS = 5
METER_KEY = bytes.fromhex("C0DEBA5E0123456789ABCDEFFEDCBA98")
WRONG_KEY = bytes.fromhex("0BADC0DE0BADC0DE0BADC0DE0BADC0DE")
METER_AUTH_KEY = bytes.fromhex("A5A5A5A55A5A5A5A0F0F0F0FF0F0F0F0")


@pytest.fixture(scope="session", autouse=True)
def scan_session_logs() -> Iterator[None]:
    yield
    assert not SESSION_SCAN.findings()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


def resume_times(returns: list[float], arrivals: list[float]) -> list[float]:
    """Seconds from each line return to the first reading that arrived after it."""
    delays = []
    for back in returns:
        after = [t for t in arrivals if t > back]
        assert after, f"no reading after the line came back at {back}"
        delays.append(after[0] - back)
    return delays


# ------------------------------------------------------------------------------------- 3a. pty drops


async def test_pty_closed_and_reopened_5_times_reading_resumes_within_2_s(broker: Broker, tmp_path: Path) -> None:
    link = tmp_path / "ttyHAN0"
    returns: list[float] = []
    # A drop every 12 messages (1.2 s); the pty comes back at once under the same symlink.
    sim = await serve_pty(
        "kamstrup-no", speed=100, pacing=False, drop_every=12, link=str(link), seed=61,
        on_reopen=lambda _path: returns.append(time.monotonic()),
    )  # fmt: skip
    config = write_config(
        tmp_path / "amsd.toml",
        broker_port=broker.port,
        outbox=tmp_path / "outbox",
        meters=[{"name": "m", "port": str(link)}],
    )
    try:
        async with timed_listener(broker, "amsd/m/#") as sub, AmsdProcess(config, tmp_path) as amsd:
            await sub.until(lambda: bool(sub.on(STATE)))
            await sub.until(lambda: len(returns) >= DROPS + 1 and any(t > returns[DROPS] for t, _ in sub.timed(STATE)))
            assert await amsd.stop() == 0
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)

    first_reading = sub.timed(STATE)[0][0]
    measured = resume_times([t for t in returns if t > first_reading][:DROPS], [t for t, _ in sub.timed(STATE)])
    assert len(measured) == DROPS and max(measured) < RESUME_LIMIT_S, measured
    numbers = published_sequence(sub.on(STATE), sequence_of(sim.records))
    assert numbers == sorted(set(numbers)), "readings repeated or out of order"
    print(f"pty: resume after line return (s): {[round(d, 3) for d in measured]}")


# ------------------------------------------------------------------------------------- 3b. TCP bridge drops


@dataclass
class Bridge:
    """A ser2net-like TCP bridge for one simulated meter that can be taken down and brought back on the
    same port. Messages go out every `period` seconds to whoever is connected."""

    simulator: MeterSimulator
    period: float
    port: int = field(default_factory=free_port)
    sent: list[SimFrame] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _clients: set[asyncio.StreamWriter] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.returns.append(time.monotonic())
        if self._task is None:
            self._task = asyncio.create_task(self._pump())

    async def down(self) -> None:
        """The bridge goes away: listening socket closed, connections reset."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._clients):
            writer.transport.abort()
        self._clients.clear()
        await self._server.wait_closed()
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(4096):
                pass
        self._clients.discard(writer)

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            frame = self.simulator.next_frame()
            if self._clients:
                for writer in list(self._clients):
                    writer.write(frame.data)
                self.sent.append(frame)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            await self.down()


async def test_tcp_bridge_dropped_5_times_reading_resumes_within_2_s(broker: Broker, tmp_path: Path) -> None:
    bridge = Bridge(MeterSimulator("dsmr5", seed=62), period=0.1)
    await bridge.up()
    config = write_config(
        tmp_path / "amsd.toml",
        broker_port=broker.port,
        outbox=tmp_path / "outbox",
        meters=[{"name": "m", "port": bridge.address}],
    )
    rng = random.Random(62)
    try:
        async with timed_listener(broker, "amsd/m/#") as sub, AmsdProcess(config, tmp_path) as amsd:
            await sub.until(lambda: len(sub.on(STATE)) >= 3)
            for _ in range(DROPS):
                await bridge.down()
                await asyncio.sleep(rng.uniform(0.2, 0.6))  # the bridge is away for a moment (real time is the fault)
                await bridge.up()
                back = bridge.returns[-1]
                await sub.until(lambda back=back: any(t > back for t, _ in sub.timed(STATE)))  # type: ignore[misc]
            assert await amsd.stop() == 0
    finally:
        await bridge.close()

    measured = resume_times(bridge.returns[1:], [t for t, _ in sub.timed(STATE)])
    assert max(measured) < RESUME_LIMIT_S, measured
    index = {time_key(f.meter_time): n for n, f in enumerate(bridge.sent)}
    numbers = published_sequence(sub.on(STATE), index)
    assert numbers == sorted(set(numbers)), "readings repeated or out of order"
    serial_states = [json.loads(p)["serial_state"] for p in sub.on("amsd/m/diagnostics")]
    assert serial_states.count("waiting_retry") >= DROPS, serial_states
    print(f"tcp: resume after line return (s): {[round(d, 3) for d in measured]}")


# ------------------------------------------------------------------------------------- 4. noise


@dataclass
class Damaged:
    start: int
    end: int
    kind: str  # flip | truncated | garbage


CLEAN_TAIL = 12


def build_noisy_stream(
    profile: str, count: int, seed: int
) -> tuple[bytes, list[SimFrame], list[Damaged], list[tuple[int, int]]]:
    """Messages of one simulated meter with bit flips, truncations and garbage between them.

    Returns the byte stream, the clean messages, the damaged spans and the clean spans. A flip stays
    inside the bytes a checksum covers; a truncation keeps the frame start but never reaches the end
    of its checked part (a DSMR telegram cut right after `!` would be a valid telegram without CRC, an
    HDLC frame cut after its FCS a valid frame without closing flag)."""
    rng = random.Random(seed)
    simulator = MeterSimulator(profile, seed=seed)
    forbidden = frozenset(b"\x7e\x68\x16\x2f\x21\xdb\x0f\xe0\xe6\r\n")  # garbage never looks like a frame start or end
    alphabet = bytes(b for b in range(256) if b not in forbidden)
    stream = bytearray()
    clean: list[SimFrame] = []
    damaged: list[Damaged] = []
    clean_spans: list[tuple[int, int]] = []
    for n in range(count):
        frame = simulator.next_frame()
        data = frame.data
        checked_end = data.rfind(b"!") if data[:1] == b"/" else len(data) - 1  # exclusive
        # Clean at both ends: a cut frame declares up to 2 KiB, and the decoder waits for that many
        # bytes before it can tell the frame was cut, so enough clean bytes must follow the last damage.
        roll = rng.random() if 2 <= n < count - CLEAN_TAIL else 0.0
        if roll > 0.85:
            garbage = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
            damaged.append(Damaged(len(stream), len(stream) + len(garbage), "garbage"))
            stream += garbage
            roll = 0.0
        start = len(stream)
        if roll > 0.7:
            # Never an HDLC flag: a damaged flag between the frames of one message is rightly tolerated.
            position = rng.choice([i for i in range(1, checked_end) if data[i] != 0x7E])
            while True:
                flipped = data[position] ^ rng.randrange(1, 256)
                if flipped not in b"!/\r\n":
                    break
            stream += data[:position] + bytes((flipped,)) + data[position + 1 :]
            damaged.append(Damaged(start, len(stream), "flip"))
        elif roll > 0.55:
            stream += data[: rng.randrange(1, checked_end - 1)]
            damaged.append(Damaged(start, len(stream), "truncated"))
        else:
            stream += data
            clean.append(frame)
            clean_spans.append((start, len(stream)))
    return bytes(stream), clean, damaged, clean_spans


def covered_by_reports(stream: bytes, reports: list[bytes], damaged: list[Damaged]) -> tuple[bytearray, bytearray]:
    """Which stream bytes the raw reports carry. A report found once in the stream is placed there; a
    short one found several times is placed on damaged bytes it can explain, if any (reports come
    roughly, not strictly, in stream order: a pending candidate is reported after what follows it).
    Returns (covered, covered by uniquely placed reports)."""
    in_damage = bytearray(len(stream))
    for span in damaged:
        in_damage[span.start : span.end] = b"\x01" * (span.end - span.start)
    covered = bytearray(len(stream))
    unique = bytearray(len(stream))
    for report in reports:
        positions: list[int] = []
        at = stream.find(report)
        while at >= 0 and len(positions) < 1000:
            positions.append(at)
            at = stream.find(report, at + 1)
        assert positions, f"raw report not in the stream: {report[:32].hex()}"
        size = len(report)
        if len(positions) == 1:
            unique[positions[0] : positions[0] + size] = b"\x01" * size
            chosen: int | None = positions[0]
        else:
            chosen = next(
                (a for a in positions if all(in_damage[a : a + size]) and not all(covered[a : a + size])), None
            )
        if chosen is not None:
            covered[chosen : chosen + size] = b"\x01" * size
    return covered, unique


def uncovered(stream: bytes, covered: bytearray, span: Damaged) -> list[int]:
    """Damaged bytes no report carries; an HDLC flag may stand alone (closing or fill flag)."""
    return [i for i in range(span.start, span.end) if not covered[i] and stream[i] != 0x7E]


@pytest.mark.parametrize(
    "profile",
    [
        "kamstrup-no",
        "kaifa-no",  # (not aidon-no: its list 1 carries no clock to count readings by)
        "dsmr5",
    ],
)
async def test_noise_truncation_and_bit_flips_every_clean_frame_decoded_every_damaged_one_on_raw(
    broker: Broker, tmp_path: Path, profile: str
) -> None:
    stream, clean, damaged, clean_spans = build_noisy_stream(profile, 80, seed=64)
    assert {d.kind for d in damaged} == {"flip", "truncated", "garbage"}
    # Published `ts` -> position among the clean messages (naive or aware, as the meter sends it).
    index = {
        time_key(moment): n for n, f in enumerate(clean) for moment in (f.meter_time, f.meter_time.replace(tzinfo=None))
    }
    sent = asyncio.Event()

    async def line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for offset in range(0, len(stream), 97):  # in pieces, like a serial line
            writer.write(stream[offset : offset + 97])
            await writer.drain()
        sent.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(line, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = write_config(
        tmp_path / "amsd.toml",
        broker_port=broker.port,
        outbox=tmp_path / "outbox",
        meters=[{"name": "m", "port": f"socket://127.0.0.1:{port}"}],
    )
    try:
        async with timed_listener(broker, "amsd/m/#") as sub, AmsdProcess(config, tmp_path) as amsd:
            # The last message is clean: once it is published, everything before it was handled.
            last = len(clean) - 1
            await sub.until(lambda: last in published_sequence(sub.on(STATE), index))
            assert sent.is_set()
            assert await amsd.stop() == 0
    finally:
        server.close()

    numbers = published_sequence(sub.on(STATE), index)
    assert numbers == list(range(len(clean))), "a clean frame was lost or a damaged one decoded"
    reports = [bytes.fromhex(json.loads(p)["hex"]) for p in sub.on(RAW)]
    covered, unique = covered_by_reports(stream, reports, damaged)
    for span in damaged:
        assert not uncovered(stream, covered, span), f"{span.kind} at {span.start} not fully published on raw"
    for start, end in clean_spans:
        # A cut frame may be reported with the flag that opens the next one (HDLC frames share flags).
        assert not [i for i in range(start, end) if unique[i] and stream[i] != 0x7E], f"clean frame at {start} on raw"
    kinds = {(json.loads(p)["layer"], json.loads(p)["error"]) for p in sub.on(RAW)}
    print(f"{profile}: {len(clean)} clean, {len(damaged)} damaged spans, raw reports {sorted(kinds)}")


# ------------------------------------------------------------------------------------- 5. wrong key


@pytest.mark.parametrize(
    ("profile", "auth_key"),
    [("lg-e450-ch", METER_AUTH_KEY), ("sagemcom-at", None)],
    ids=["gcm-tag", "ctr-plausibility"],
)
async def test_wrong_key_raw_published_decrypt_errors_counted_one_log_line_no_crash(
    broker: Broker, tmp_path: Path, profile: str, auth_key: bytes | None
) -> None:
    SESSION_SCAN.add_secret(WRONG_KEY, f"{profile} configured (wrong) encryption key")
    SESSION_SCAN.add_secret(METER_KEY, f"{profile} meter's key")
    if auth_key is not None:
        SESSION_SCAN.add_secret(auth_key, f"{profile} authentication key")
    # The TCP line drops every 15 messages: each reconnect is a state change, which publishes diagnostics.
    sim = await serve_tcp(
        profile, speed=50, pacing=False, wait_for_client=True, seed=65, drop_every=15,
        encryption_key=METER_KEY, authentication_key=auth_key,
    )  # fmt: skip
    settings: dict[str, object] = {"name": "m", "port": sim.address, "encryption_key": "0x" + WRONG_KEY.hex().upper()}
    if auth_key is not None:
        settings["authentication_key"] = auth_key.hex()
    config = write_config(
        tmp_path / "amsd.toml", broker_port=broker.port, outbox=tmp_path / "outbox", meters=[settings]
    )
    try:
        async with timed_listener(broker, "amsd/m/#") as sub, AmsdProcess(config, tmp_path) as amsd:

            def decrypt_errors() -> int:
                counts = [json.loads(p).get("decrypt_errors", 0) for p in sub.on("amsd/m/diagnostics")]
                return max(counts, default=0)

            await sub.until(lambda: decrypt_errors() >= 10 and sim.drops >= 2)
            await sub.until(lambda: len(sub.on(RAW)) >= 20)
            assert amsd.running, "amsd crashed"
            assert await amsd.stop() == 0
    finally:
        await asyncio.wait_for(sim.stop(), WAIT)

    assert not sub.on(STATE)
    sent = {r.data.hex().upper() for r in sim.records}
    raw = [json.loads(p) for p in sub.on(RAW)]
    wrong = [r for r in raw if r["error"] == "wrong_key"]
    assert len(wrong) >= 20 - sim.drops * 2, raw[:3]
    assert all(r["layer"] == "cipher" for r in wrong)
    assert all(r["hex"] in sent for r in wrong), "raw hex is not the frame as sent"
    logged = [e for e in amsd.log_events() if e.get("event") == "frame not decoded"]
    assert len(logged) == 1, logged  # rate-limited: one line per minute per meter and error
    assert logged[0]["error"] == "wrong_key" and logged[0]["meter"] == "m" and logged[0]["level"] == "warning"
    assert "key" in logged[0]["detail"]
    assert "Traceback" not in amsd.output()
    # Nothing published carries a key either.
    texts = [(f"mqtt {topic}", payload.decode(errors="replace")) for _, topic, payload in sub.messages]
    assert not SESSION_SCAN.findings(texts)


# ------------------------------------------------------------------------------------- 7. the scan itself


def test_secret_scan_recognises_every_spelling_of_a_key_and_a_password() -> None:
    """The session scan is only worth something if it would find a leak."""
    scan = SecretScan()
    scan.add_secret(METER_KEY, "key")
    scan.add_secret('pä"ss', "password")
    leaks = [
        METER_KEY.hex(),
        METER_KEY.hex().upper(),
        ":".join(f"{b:02X}" for b in METER_KEY),
        " ".join(f"0x{b:02x}" for b in METER_KEY),
        repr(METER_KEY),
        METER_KEY[:8].hex(),  # half a key is a leak too
        'pä"ss',
        json.dumps('pä"ss'),
        repr('pä"ss'),
    ]
    for leak in leaks:
        assert scan.findings([("log", f"before {leak} after")]), leak
    assert not scan.findings([("log", "frame not decoded error=wrong_key meter=m ***")])
