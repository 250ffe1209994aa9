"""`amsd demo` as a user runs it: without a broker it prints what it would publish; with one, it publishes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import Subscriber
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0  # the demo runs for 3 s; only a hang waits this long


async def _demo(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "100000"}  # keep lines unabridged for the assertions
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amsd",
        "demo",
        "--duration",
        "3",
        "--speed",
        "20",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def test_demo_without_a_broker_prints_what_it_would_publish() -> None:
    port = free_port()  # nothing listens here
    code, out, err = await _demo("--broker", f"127.0.0.1:{port}")
    assert code == 0, err
    assert f"no MQTT broker reachable at 127.0.0.1:{port}" in out
    assert "this is what amsd would publish" in out
    states = [line for line in out.splitlines() if line.startswith("amsd-demo/demo/state ")]
    assert states, out
    body = json.loads(states[0].split(" ", 1)[1])
    assert body["meter_id"] and isinstance(body["power_import"], int | float)
    assert "amsd-demo/demo/availability online" in out
    summary = out.strip().splitlines()[-1]
    assert "readings decoded, 0 errors" in summary and "(printed, not published)" in summary
    assert "Traceback" not in out + err


async def test_demo_with_bad_arguments_is_a_usage_error() -> None:
    code, _, err = await _demo("--broker", "127.0.0.1:notaport")
    assert code == 2 and "--broker" in err
    code, _, err = await _demo("--profile", "no-such-meter")
    assert code == 2 and "unknown profile" in err


@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_demo_publishes_to_a_broker(broker: Broker, subscriber: Subscriber) -> None:
    code, out, err = await _demo("--broker", f"127.0.0.1:{broker.port}")
    assert code == 0, err
    assert f"publishing to MQTT broker 127.0.0.1:{broker.port} under amsd-demo/" in out

    # communicate() returned after the demo's clean stop, so its last message is at the broker already;
    # the waits below only cover the hop to the subscriber.
    await subscriber.wait_for("amsd-demo/status", lambda p: p == b"offline", timeout=10)
    assert subscriber.on("amsd-demo/status")[0] == b"online"
    states = await subscriber.wait_for("amsd-demo/demo/state", timeout=10)
    first = json.loads(states[0])
    assert first["meter_id"] and "power_import" in first and first["received"]
    obis = json.loads((await subscriber.wait_for("amsd-demo/demo/obis", timeout=10))[0])
    assert obis["values"]["1-0:1.7.0.255"]["unit"] == "W"
    assert (await subscriber.wait_for("amsd-demo/demo/power_import", timeout=10))[0]
    assert b"online" in subscriber.on("amsd-demo/demo/availability")
    configs = [t for t, _, _ in subscriber.messages if t.startswith("homeassistant/device/amsd_")]
    assert configs and all(t.endswith("/config") for t in configs)
    # What the demo printed is what it published.
    printed_states = [line for line in out.splitlines() if line.startswith("amsd-demo/demo/state ")]
    assert len(printed_states) == len(subscriber.on("amsd-demo/demo/state"))
    assert not subscriber.on("amsd-demo/demo/raw")  # a clean simulated line has no bad frames
