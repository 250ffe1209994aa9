"""`[accounting]` end to end: a simulated Kamstrup (NO list 3: counters once an hour) on a compressed
clock, `amsd run` as a real process, a real Mosquitto; the state file carries the month over a restart.

The simulator's meter clock runs `SPEED` times faster than real time (simulated hours of 2.5 s), so the
test sees several hour ends in a few seconds. It starts at 06:59:30 local today so that it stays inside
one local day whatever the time of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Subscriber
from tests.e2e.test_daemon_e2e import DaemonProcess, listening_into, meter, simulators, write_config
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

OSLO = ZoneInfo("Europe/Oslo")
SPEED = 1440.0  # one simulated hour every 2.5 s
TOPIC = "amsd/m/accounting"
# Generous (only a failing run waits this long): on a loaded 2-core machine the daemon, Mosquitto and
# this process share the CPU with other test runs.
WAIT = 30.0


def listening(broker: Broker) -> contextlib.AbstractAsyncContextManager[Subscriber]:
    """Only the topics this test reads: the per-value topics would be most of the traffic."""
    return listening_into(
        Subscriber(), broker, (TOPIC, "amsd/m/state", "homeassistant/device/#"), identifier="accounting-e2e"
    )


def counters(subscriber: Subscriber) -> dict[datetime, float]:
    """energy_import of every list 3 seen on the state topic, by the meter's (local) clock."""
    found: dict[datetime, float] = {}
    for payload in subscriber.on("amsd/m/state"):
        body = json.loads(payload)
        if "energy_import" in body and body["ts"]:
            found[datetime.fromisoformat(body["ts"]).replace(tzinfo=OSLO)] = body["energy_import"]
    return found


def whole_hour_closed(body: dict[str, Any], after: datetime) -> bool:
    """Whether the message (after `after`) is the list 3 at an hour end (the simulator sends it at
    hh:00:00 exactly) and closed a previous hour that amsd saw whole (not the partial first hour, not
    one cut by the restart)."""
    previous = body["previous_hour"]
    whole = bool(previous) and not previous["estimated"] and not previous["gap"]
    moment = datetime.fromisoformat(body["ts"])
    return whole and moment > after and moment == datetime.fromisoformat(body["hour"]["start"])


def more_than(subscriber: Subscriber, count: int) -> bool:
    return len(subscriber.messages) > count


async def wait_closed_hour(subscriber: Subscriber, after: datetime) -> dict[str, Any]:
    """The first accounting message after `after` that closed a whole hour. Scans each message once:
    the daemon sends thousands, and a predicate re-run over all of them on every arrival is quadratic."""

    async def scan() -> dict[str, Any]:
        done = 0
        while True:
            messages = subscriber.messages
            for topic, payload, _retain in messages[done:]:
                if topic == TOPIC:
                    body: dict[str, Any] = json.loads(payload)
                    if whole_hour_closed(body, after):
                        return body
            done = len(messages)
            async with subscriber._changed:
                await subscriber._changed.wait_for(functools.partial(more_than, subscriber, done))

    return await asyncio.wait_for(scan(), WAIT)


async def test_accounting_hours_and_restart(broker: Broker, tmp_path: Path) -> None:
    from amsd.sim.simulate import serve_tcp

    start = datetime.combine(datetime.now(OSLO).date(), time(6, 59, 30), OSLO)
    sim = await serve_tcp(
        "kamstrup-no", speed=SPEED, pacing=False, wait_for_client=True, start=start.astimezone(UTC), seed=7
    )
    async with simulators(sim), listening(broker) as subscriber:
        config = write_config(tmp_path, broker.port, [meter("m", sim.address)])
        with config.open("a", encoding="utf-8") as handle:
            handle.write('[accounting]\nenabled = true\ntimezone = "Europe/Oslo"\npublish_interval_s = 60\n')
        state_file = tmp_path / "accounting-m.json"

        async with DaemonProcess(config, tmp_path) as daemon:
            first = await wait_closed_hour(subscriber, start)
            code, _took = await daemon.stop()
            assert code == 0, daemon.output()
        seen = counters(subscriber)
        baseline = seen[start]  # the first message is a list 3 (06:59:30)
        hour = first["previous_hour"]
        hour_start = datetime.fromisoformat(hour["start"])
        hour_end = hour_start.replace(hour=hour_start.hour + 1)
        # The hour's energy is exactly what the counters rose by between its two list 3 frames.
        assert hour["import_kwh"] == pytest.approx(seen[hour_end] - seen[hour_start], abs=0.0015)
        assert 0.0 < hour["import_kwh"] < 10.0
        assert first["day"]["start"] == datetime.combine(start.date(), time(0), OSLO).isoformat()
        assert first["capacity"]["peaks"] and first["capacity"]["step"] >= 1

        saved = json.loads(state_file.read_text(encoding="utf-8"))
        assert saved["version"] == 1 and saved["hours"]
        # Saved on stop: the last reading the first process accounted; later ones are the second's.
        before_restart = datetime.fromtimestamp(saved["last_t"], UTC)

        # Restart: the simulated meter went on meanwhile (an hour or so of its clock unseen).
        async with DaemonProcess(config, tmp_path) as daemon:
            latest = await wait_closed_hour(subscriber, before_restart)
            code, _took = await daemon.stop()
            assert code == 0, daemon.output()
        assert "accounting state restored" in daemon.output()

    seen = counters(subscriber)
    moment = datetime.fromisoformat(latest["ts"])
    # Nothing lost across the restart: the day holds all the counter rose by since the first frame.
    assert latest["day"]["import_kwh"] == pytest.approx(seen[moment] - baseline, abs=0.005)
    assert latest["month"]["import_kwh"] >= latest["day"]["import_kwh"]
    assert latest["counters"]["resets"] == 0 and latest["counters"]["jumps"] == 0
    assert 0.0 < latest["previous_hour"]["import_kwh"] < 10.0
    # Home Assistant got the accounting entities.
    discovery = [json.loads(p) for t, p, _r in subscriber.messages if t.startswith("homeassistant/device/")]
    assert discovery and "accounting_month_import" in discovery[-1]["components"]
    assert json.loads(state_file.read_text(encoding="utf-8"))["last_t"] >= moment.timestamp()
