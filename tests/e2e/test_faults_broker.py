"""Fault injection, broker side (issue 4, scenarios 1, 2 and 6): a real Mosquitto stopped and started on
the same port, `amsd run` as a real process (kill -9), simulated meters counting what they sent.

Readings are counted by sequence: the simulated meter clock is unique per message, so every published
`state` maps back to the simulator's message index. Duplicates are allowed (QoS 1 is at least once),
losses and reordering are not.

The broker is stopped with SIGTERM and has persistence on, and the test subscriber keeps a persistent
session: a broker killed with SIGKILL loses messages it had already acknowledged to amsd but not yet
forwarded, which is a broker-side loss no client can see; what is tested here is amsd's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from amsd.sim.simulate import SimServer, serve_tcp
from tests.e2e.faults_common import (
    SESSION_SCAN,
    WAIT,
    AmsdProcess,
    eventually,
    first_occurrences,
    outbox_dropped,
    outbox_rows,
    published_sequence,
    sequence_of,
    timed_listener,
    write_config,
)
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

STATE = "amsd/m/state"
# Secrets of this module: made up for the tests, registered with the session-wide log scan.
MQTT_PASSWORD = "faults-Br0ker-pässword/#1"
LISTENER_PASSWORD = "listener-only-password"
ENCRYPTION_KEY = bytes.fromhex("5A0C93D1E27F4B6688A1C2D3E4F50617")
AUTHENTICATION_KEY = bytes.fromhex("D00DFEEDC0FFEE1234567890ABCDEF01")


@pytest.fixture(scope="session", autouse=True)
def scan_session_logs() -> Iterator[None]:
    """Scenario 7 for this module: no configured secret in any amsd log of the session."""
    yield
    assert not SESSION_SCAN.findings()


@contextlib.asynccontextmanager
async def meter(server: SimServer) -> AsyncIterator[SimServer]:
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), WAIT)


async def finish(sim: SimServer, extra: int = 3) -> int:
    """Let the simulated meter send `extra` more messages, then end; returns how many it sent."""
    sim.max_frames = sim.frames_sent + extra
    await asyncio.wait_for(sim.finished.wait(), WAIT)
    return sim.frames_sent


# ------------------------------------------------------------------------------------- 1. broker restarts


async def test_broker_killed_and_restarted_5_times_every_reading_arrives_in_order(tmp_path: Path) -> None:
    users = {"amsd": MQTT_PASSWORD, "listener": LISTENER_PASSWORD}
    SESSION_SCAN.add_secret(MQTT_PASSWORD, "mqtt.password")
    broker = Broker(tmp_path / "broker", users=users, persistence=True).start()
    sim = await serve_tcp("kamstrup-no", speed=100, pacing=False, wait_for_client=True, seed=51)
    config = write_config(
        tmp_path / "amsd.toml",
        broker_port=broker.port,
        meters=[{"name": "m", "port": sim.address}],
        outbox=tmp_path / "outbox.sqlite3",
        mqtt={"username": "amsd", "password": MQTT_PASSWORD},
    )
    try:
        async with (
            meter(sim),
            timed_listener(broker, STATE, username="listener", password=LISTENER_PASSWORD) as sub,
            AmsdProcess(config, tmp_path) as amsd,
        ):

            def highest() -> int:
                return max(published_sequence(sub.on(STATE), sequence_of(sim.records)), default=-1)

            def context() -> str:
                return f"sent {sim.frames_sent}, highest received {highest()}; amsd log: {amsd.output()[-2500:]}"

            await sub.until(lambda: highest() >= 3)
            for _ in range(5):
                broker.stop()
                # Readings pile up while the broker is away...
                await asyncio.wait_for(sim.wait_frames(sim.frames_sent + 8), WAIT)
                broker.start()
                # ...and live ones flow again after the backlog.
                target = sim.frames_sent + 2
                await sub.until(lambda target=target: highest() >= target, context=context)  # type: ignore[misc]
            sent = await finish(sim)
            await sub.until(
                lambda: len(set(published_sequence(sub.on(STATE), sequence_of(sim.records)))) >= sent, context=context
            )
            assert amsd.running
            assert await amsd.stop() == 0
    finally:
        broker.stop()

    numbers = published_sequence(sub.on(STATE), sequence_of(sim.records))
    assert first_occurrences(numbers) == list(range(sent)), "lost or reordered readings"
    assert sent >= 5 * 8
    # A broker restart is expected: it may warn, but nothing may log an error.
    errors = [e for e in amsd.log_events() if e.get("level") in ("error", "critical")]
    assert not errors, errors
    assert "Traceback" not in amsd.output()


# ------------------------------------------------------------------------------------- 2. kill -9 during outage


async def test_kill_9_while_the_broker_is_down_then_restart_drains_the_outbox(tmp_path: Path) -> None:
    SESSION_SCAN.add_secret(ENCRYPTION_KEY, "meters[0].encryption_key")
    SESSION_SCAN.add_secret(AUTHENTICATION_KEY, "meters[0].authentication_key")
    keys = {
        "encryption_key": ENCRYPTION_KEY.hex(),
        "authentication_key": ":".join(f"{b:02X}" for b in AUTHENTICATION_KEY),
    }
    broker = Broker(tmp_path / "broker", persistence=True).start()
    outbox = tmp_path / "outbox.sqlite3"
    first = await serve_tcp(
        "lg-e450-ch", speed=50, pacing=False, wait_for_client=True, seed=52, frames=30,
        encryption_key=ENCRYPTION_KEY, authentication_key=AUTHENTICATION_KEY,
    )  # fmt: skip
    # The meter after amsd's restart: an hour later, so its readings are told apart by time.
    second = await serve_tcp(
        "lg-e450-ch", speed=50, pacing=False, wait_for_client=True, seed=53,
        encryption_key=ENCRYPTION_KEY, authentication_key=AUTHENTICATION_KEY,
        start=first.simulator.start + timedelta(hours=1),
    )  # fmt: skip
    config_before = write_config(
        tmp_path / "before.toml",
        broker_port=broker.port,
        outbox=outbox,
        meters=[{"name": "m", "port": first.address, **keys}],
    )
    config_after = write_config(
        tmp_path / "after.toml",
        broker_port=broker.port,
        outbox=outbox,
        meters=[{"name": "m", "port": second.address, **keys}],
    )
    try:
        async with meter(first), meter(second), timed_listener(broker, STATE) as sub:
            async with AmsdProcess(config_before, tmp_path, "amsd-killed") as killed:
                await sub.until(lambda: len(sub.on(STATE)) >= 3)
                broker.stop()
                await asyncio.wait_for(first.finished.wait(), WAIT)  # the meter sent all 30

                def held() -> set[int]:
                    index = sequence_of(first.records)
                    stored = published_sequence(outbox_rows(outbox, STATE), index)
                    return set(stored) | set(published_sequence(sub.on(STATE), index))

                # Every reading is either delivered or committed to the outbox: then pull the plug.
                await eventually(lambda: held() >= set(range(30)))
                assert await killed.stop(signal.SIGKILL) == -signal.SIGKILL
            assert outbox_rows(outbox, STATE), "the outbox is on disk after kill -9"

            broker.start()
            async with AmsdProcess(config_after, tmp_path, "amsd-restarted") as restarted:

                def live() -> int:
                    later = sequence_of(second.records)
                    return sum(1 for p in sub.on(STATE) if _in(p, later))

                await sub.until(lambda: live() >= 5)
                await eventually(lambda: not outbox_rows(outbox, STATE))
                assert await restarted.stop() == 0
    finally:
        broker.stop()

    payloads = sub.on(STATE)
    before_index = sequence_of(first.records)
    old = [p for p in payloads if _in(p, before_index)]
    assert first_occurrences(published_sequence(old, before_index)) == list(range(30))
    # The backlog drains before live readings of the restarted daemon.
    last_old = max(i for i, p in enumerate(payloads) if _in(p, before_index))
    first_new = min(i for i, p in enumerate(payloads) if _in(p, sequence_of(second.records)))
    assert last_old < first_new
    assert outbox_dropped(outbox) == 0


def _in(payload: bytes, index: dict[str, int]) -> bool:
    try:
        published_sequence([payload], index)
    except AssertionError:
        return False
    return True


# ------------------------------------------------------------------------------------- 6. long outage


async def test_long_outage_honours_the_outbox_cap_counts_drops_and_memory_stays_flat(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=True)  # not started: the broker is away from the start
    outbox = tmp_path / "outbox.sqlite3"
    cap = 300
    # 1,000 readings/s of simulated meter time, each `state` + `obis` in the outbox.
    sim = await serve_tcp("kamstrup-no", speed=10000, pacing=False, wait_for_client=True, seed=56)
    config = write_config(
        tmp_path / "amsd.toml",
        broker_port=broker.port,
        outbox=outbox,
        outbox_max=cap,
        meters=[{"name": "m", "port": sim.address}],
    )
    samples: list[tuple[int, int, int]] = []  # (frames sent, RSS KiB, outbox rows)
    try:
        async with meter(sim), AmsdProcess(config, tmp_path) as amsd:
            await eventually(lambda: outbox_dropped(outbox) > 0)
            for target in range(500, 2501, 500):
                await asyncio.wait_for(sim.wait_frames(target), WAIT)
                rows = len(outbox_rows(outbox))
                samples.append((sim.frames_sent, amsd.rss_kib(), rows))
                assert rows <= cap
            sent = await finish(sim)
            await eventually(lambda: outbox_dropped(outbox) > 0 and len(outbox_rows(outbox)) <= cap)
            broker.start()
            async with timed_listener(broker, "amsd/m/#") as sub:
                await eventually(lambda: not outbox_rows(outbox))
                await sub.until(lambda: bool(sub.on("amsd/m/diagnostics")))
                assert await amsd.stop() == 0
    finally:
        broker.stop()

    # Memory: flat once warm (the outbox lives on disk, the queue is bounded).
    growth_kib = samples[-1][1] - samples[0][1]
    assert growth_kib < 8 * 1024, samples
    # The newest readings survived the cap, contiguous up to the last one sent; the oldest were dropped.
    numbers = first_occurrences(published_sequence(sub.on(STATE), sequence_of(sim.records)))
    assert numbers and numbers == list(range(numbers[0], sent)), numbers[:5]
    assert len(numbers) <= cap // 2 and numbers[0] > 0
    diagnostics = json.loads(sub.on("amsd/m/diagnostics")[-1])
    assert diagnostics["dropped"] > 0 and diagnostics["dropped"] == outbox_dropped(outbox)
    print(f"long outage: {sent} readings, RSS samples (frames, KiB, rows) {samples}")
