"""Home Assistant discovery end to end: `amsd run` as a real process, a real Mosquitto, a simulated
Aidon meter on a TCP bridge. The meter's lists are sent in a scripted order (list 2 first, then
list 3) so the test can see the device config grow when a new list reveals new values.

Checks: the retained config on `homeassistant/device/amsd_<meter_id>/config` passes the schema,
states arrive on every announced per-value topic, the config is re-sent after Home Assistant
announces `online`, and grows when list 3 brings counters and the meter clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from amsd.sim.meters import MeterSimulator, SimFrame
from tests.conftest import Subscriber
from tests.e2e.test_daemon_e2e import WAIT, DaemonProcess, meter, retained, write_config
from tests.ha_schema import validate_device_discovery
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]



class ScriptedMeter:
    """A TCP bridge (like ser2net) that writes the frames the test hands it, when it says so."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self.address = ""

    async def __aenter__(self) -> ScriptedMeter:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.address = f"socket://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), WAIT)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(4096):
                pass

    async def send(self, *frames: SimFrame) -> None:
        await asyncio.wait_for(self.connected.wait(), WAIT)
        assert self._writer is not None
        for frame in frames:
            self._writer.write(frame.data)
        await asyncio.wait_for(self._writer.drain(), WAIT)


@contextlib.asynccontextmanager
async def mqtt_client(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="fake-home-assistant") as client:
        yield client


def _components(payload: bytes) -> dict[str, Any]:
    body = json.loads(payload)
    assert validate_device_discovery(body) == [], body
    components: dict[str, Any] = body["components"]
    return components


def _values(components: dict[str, Any]) -> dict[str, Any]:
    return {k: c for k, c in components.items() if not k.startswith("diagnostics_")}


async def test_discovery_states_reannounce_and_growing_config(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    # The meter's clock runs now, as a real one: amsd infers the zone of its offset-less local time.
    simulator = MeterSimulator("aidon-no", seed=21, start=datetime.now(UTC))
    frames = [simulator.next_frame() for _ in range(9)]
    list3 = frames[0]
    list2 = [f for f in frames if f.list_name == "list2"]
    list1 = [f for f in frames if f.list_name == "list1"]
    assert list3.list_name == "list3" and len(list2) >= 2 and list1
    config_topic = f"homeassistant/device/amsd_{list3.meter_id}/config"

    async with ScriptedMeter() as line:
        config = write_config(tmp_path, broker.port, [meter("house", line.address, baudrate=2400, parity="E")])
        async with DaemonProcess(config, tmp_path) as daemon:
            # 1. List 2 first: the device is announced with what list 2 carries, no counters yet.
            await line.send(list2[0])
            (first,) = await subscriber.wait_for(config_topic, timeout=WAIT)
            announced = _values(_components(first))
            assert "power_import" in announced and "voltage_l1" in announced and "grid_power" in announced
            assert not any(k.startswith("energy_") for k in announced) and "meter_time" not in announced
            assert json.loads(await retained(broker, config_topic)) == json.loads(first)

            # 2. States arrive on every announced per-value topic, with the values the meter sent.
            for component in announced.values():
                await subscriber.wait_for(component["state_topic"], timeout=WAIT)
            expected_power = list2[0].expected["1-0:1.7.0.255"].value
            assert subscriber.on("amsd/house/power_import")[-1] == str(expected_power).encode()
            diagnostics = json.loads(await retained(broker, "amsd/house/diagnostics"))
            for key, component in _components(first).items():
                if key.startswith("diagnostics_"):
                    assert component["state_topic"] == "amsd/house/diagnostics"
                    assert key.removeprefix("diagnostics_") in diagnostics, key
            assert await retained(broker, "amsd/house/availability") == b"online"
            assert await retained(broker, "amsd/status") == b"online"

            # 3. Home Assistant restarts: it announces `online`; amsd re-sends the config (after a
            #    small random delay) and the retained diagnostics.
            configs_before = len(subscriber.on(config_topic))
            diagnostics_before = len(subscriber.on("amsd/house/diagnostics"))
            async with mqtt_client(broker) as home_assistant:
                await home_assistant.publish("homeassistant/status", b"online", qos=1)
            again = await subscriber.wait_for(config_topic, count=configs_before + 1, timeout=WAIT)
            assert json.loads(again[-1]) == json.loads(first)
            assert len(subscriber.on("amsd/house/diagnostics")) > diagnostics_before

            # 4. List 3 reveals counters and the meter clock: the config grows, nothing is lost.
            await line.send(list3, *list1)
            grown = await subscriber.wait_for(
                config_topic, lambda p: "energy_import" in json.loads(p)["components"], timeout=WAIT
            )
            now_announced = _values(_components(grown[-1]))
            assert set(announced) < set(now_announced)
            assert {"energy_import", "energy_export", "energy_reactive_import", "meter_time"} <= set(now_announced)
            energy = now_announced["energy_import"]
            assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
                "energy",
                "total_increasing",
                "kWh",
            )
            assert "expire_after" not in energy
            assert json.loads(await retained(broker, config_topic)) == json.loads(grown[-1])
            (counter,) = await subscriber.wait_for("amsd/house/energy_import", timeout=WAIT)
            assert float(counter) == list3.expected["1-0:1.8.0.255"].value
            # Counters and the clock are retained: a restarted Home Assistant gets them at once.
            assert await retained(broker, "amsd/house/energy_import") == counter
            stamp = datetime.fromisoformat((await retained(broker, "amsd/house/meter_time")).decode())
            assert stamp.tzinfo is not None
            assert stamp == list3.meter_time  # local wall time without offset: the zone is inferred
            # List 1 (power only) afterwards: no new config, power still flows.
            await subscriber.wait_for("amsd/house/power_import", count=1 + 1 + len(list1), timeout=WAIT)
            assert len(subscriber.on(config_topic)) == configs_before + 1 + len(grown)
            code, _ = await daemon.stop()
            assert code == 0, daemon.output()
