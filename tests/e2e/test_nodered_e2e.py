"""docs/node-red-flow.json in a real Node-RED, against a real Mosquitto and a real `amsd run`.

Node-RED comes from `scripts/install-node-red.sh` (repo-local, `.cache/node-red`), a global `node-red`,
or the command in env `NODE_RED_BIN`; without any of them the tests skip with the reason.

The flow runs as shipped except for its broker address: a temporary copy points at the test broker.
Node-RED is known to be subscribed once a probe message made it through the flow; from then on every
`state` message amsd publishes must come out of the flow, in order, as JSON numbers equal to amsd's.
Every wait is on an event (a log line, an MQTT message) and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from amsd.sim.simulate import serve_tcp
from tests.conftest import Subscriber
from tests.e2e.test_daemon_e2e import DaemonProcess, meter, simulators, write_config
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "docs" / "node-red-flow.json"
LOCAL_NODE_RED = REPO / ".cache" / "node-red" / "node_modules" / "node-red" / "red.js"
NOT_INSTALLED = "node-red not installed: run scripts/install-node-red.sh (needs npm)"
PARSED_TOPIC = "amsd/nodered/parsed"
START_LIMIT_S = 60.0  # a cold Node-RED start on a busy 2-core machine; about 1 s here
WAIT = 15.0  # only a failing test waits this long
FRAMES = 12  # per simulated meter


def node_red_command() -> list[str] | None:
    override = os.environ.get("NODE_RED_BIN")
    if override:
        return [override]
    node = shutil.which("node")
    if node is not None and LOCAL_NODE_RED.is_file():
        return [node, str(LOCAL_NODE_RED)]
    installed = shutil.which("node-red")
    return [installed] if installed is not None else None


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON),
    pytest.mark.skipif(node_red_command() is None, reason=NOT_INSTALLED),
]


# ------------------------------------------------------------------------------------- Node-RED runtime


def flow_for(broker: Broker) -> list[dict[str, Any]]:
    """The shipped flow with its broker config node pointed at the test broker (nothing else changed)."""
    nodes: list[dict[str, Any]] = json.loads(FLOW.read_text(encoding="utf-8"))
    brokers = [n for n in nodes if n["type"] == "mqtt-broker"]
    assert len(brokers) == 1, "the flow must have exactly one broker config node (the one users edit)"
    brokers[0]["broker"] = broker.host
    brokers[0]["port"] = str(broker.port)
    return nodes


SETTINGS = """\
// Node-RED settings for the amsd end-to-end test: loopback only, no editor, nothing fetched or installed.
module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    credentialSecret: false,
    disableEditor: true,
    editorTheme: {{ projects: {{ enabled: false }} }},
    telemetry: {{ enabled: false }},
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }}, modules: {{ allowInstall: false }} }},
    functionExternalModules: false,
    logging: {{ console: {{ level: "info", metrics: false, audit: false }} }},
}};
"""


class NodeRed:
    """`node-red --settings <tmp> --userDir <tmp> <flow copy>`; its log is collected line by line."""

    def __init__(self, broker: Broker, workdir: Path) -> None:
        command = node_red_command()
        assert command is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.flow_file = workdir / "flows.json"
        self.flow_file.write_text(json.dumps(flow_for(broker), indent=2), encoding="utf-8")
        self.settings = workdir / "settings.js"
        self.settings.write_text(SETTINGS.format(port=self.port), encoding="utf-8")
        self.command = [*command, "--settings", str(self.settings), "--userDir", str(workdir), str(self.flow_file)]
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NodeRed:
        env = {**os.environ, "NODE_RED_ENABLE_PROJECTS": "false", "CI": "true"}
        self._process = await asyncio.create_subprocess_exec(
            *self.command, cwd=self.flow_file.parent, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read_log())
        return self

    async def _read_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:  # always drained: Node-RED never blocks on a full pipe
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()  # exited: wake waiters so they fail now, not at their timeout

    async def wait_log(self, pattern: str, timeout: float) -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self.lines if regex.search(line)), None)

        async def wait() -> str:
            async with self._changed:
                await self._changed.wait_for(lambda: found() is not None or self._exited())
            line = found()
            if line is None:
                raise AssertionError(f"node-red exited before logging {pattern!r}:\n{self.log()}")
            return line

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"node-red did not log {pattern!r} within {timeout} s:\n{self.log()}") from None

    def _exited(self) -> bool:
        return self._reader is not None and self._reader.done()

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    async def get_json(self, path: str) -> Any:
        def fetch() -> Any:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                assert response.headers.get_content_type() == "application/json"
                return json.load(response)

        return await asyncio.wait_for(asyncio.to_thread(fetch), WAIT)

    async def __aexit__(self, *exc: object) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), 5)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def node_red(broker: Broker, workdir: Path) -> AsyncIterator[NodeRed]:
    """A running Node-RED whose flow is connected to `broker` (it may not have subscribed yet)."""
    async with NodeRed(broker, workdir) as runtime:
        await runtime.wait_log(r"Started flows", START_LIMIT_S)
        await runtime.wait_log(rf"Connected to broker: .*{broker.port}", START_LIMIT_S)
        yield runtime
        problems = [line for line in runtime.lines if "[error]" in line or "[function:" in line]
        assert not problems, runtime.log()


# ------------------------------------------------------------------------------------- helpers


def parsed_for(subscriber: Subscriber, meter_name: str) -> list[dict[str, Any]]:
    messages = [json.loads(p) for p in subscriber.on(PARSED_TOPIC)]
    return [m for m in messages if m["meter"] == meter_name]


async def wait_parsed(subscriber: Subscriber, meter_name: str, count: int) -> list[dict[str, Any]]:
    payloads = await subscriber.wait_for(
        PARSED_TOPIC, lambda p: json.loads(p)["meter"] == meter_name, timeout=WAIT, count=count
    )
    return [json.loads(p) for p in payloads]


async def flow_is_subscribed(broker: Broker, subscriber: Subscriber, probe: dict[str, Any]) -> dict[str, Any]:
    """Publish `probe` on amsd/probe/state until the flow answers: its subscription is then active, and
    every later message reaches it. Returns the flow's answer."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="nodered-probe") as client:
        for _ in range(int(WAIT / 0.25)):
            await client.publish("amsd/probe/state", json.dumps(probe), qos=1)
            with contextlib.suppress(TimeoutError):
                answers = await subscriber.wait_for(PARSED_TOPIC, lambda p: json.loads(p)["meter"] == "probe", 0.25)
                return dict(json.loads(answers[0]))
    raise AssertionError("the flow never answered the probe on amsd/probe/state")


def is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def numbers_of(parsed: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parsed.items() if k.endswith(("_w", "_kwh"))}


def expected_from_state(state: dict[str, Any]) -> dict[str, float]:
    """What the flow must make of one amsd `state` payload (see docs/node-red.md)."""
    expected: dict[str, float] = {}
    power_import, power_export = state.get("power_import"), state.get("power_export")
    if power_import is not None:
        expected["power_import_w"] = power_import
    if power_export is not None:
        expected["power_export_w"] = power_export
    if state.get("grid_power") is not None:
        expected["power_w"] = state["grid_power"]
    elif power_import is not None or power_export is not None:
        expected["power_w"] = (power_import or 0) - (power_export or 0)
    for direction in ("import", "export"):
        total = state.get(f"energy_{direction}")
        tariffs = [state[k] for k in (f"energy_{direction}_t{t}" for t in range(1, 5)) if k in state]
        if total is not None:
            expected[f"energy_{direction}_kwh"] = total
        elif tariffs:
            expected[f"energy_{direction}_kwh"] = sum(tariffs)
    return expected


def assert_numbers_equal(parsed: dict[str, Any], expected: dict[str, float]) -> None:
    numbers = numbers_of(parsed)
    assert numbers.keys() == expected.keys(), (parsed, expected)
    for key, value in numbers.items():
        assert is_json_number(value), (key, value)  # a JSON number, never a string
        assert math.isclose(value, expected[key], rel_tol=1e-12, abs_tol=1e-6), (key, value, expected[key])


# ------------------------------------------------------------------------------------- tests


async def test_flow_turns_amsd_state_into_numbers(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    async with node_red(broker, tmp_path / "node-red") as runtime:
        # A hand-made state: a number sent as a string is not passed on; per-tariff energy is summed.
        probe = {
            "ts": None, "received": "probe", "meter_id": "p1", "model": None,
            "power_import": "1200", "power_export": 300, "energy_import_t1": 1.1, "energy_import_t2": 2.2,
        }  # fmt: skip
        answer = await flow_is_subscribed(broker, subscriber, probe)
        assert answer["meter_id"] == "p1" and answer["received"] == "probe"
        assert numbers_of(answer) == {"power_export_w": 300, "power_w": -300, "energy_import_kwh": 3.3}

        # Aidon NO: list 3 (powers and energy) then list 1 (import power only) and list 2.
        # DSMR 5: energy only per tariff. The simulators wait for amsd, so every frame is published.
        aidon = await serve_tcp("aidon-no", speed=100, pacing=False, wait_for_client=True, frames=FRAMES, seed=3)
        dsmr = await serve_tcp("dsmr5", speed=100, pacing=False, wait_for_client=True, frames=FRAMES, seed=4)
        async with simulators(aidon, dsmr):
            config = write_config(
                tmp_path, broker.port, [meter("house", aidon.address), meter("flat", dsmr.address)],
                homeassistant=False,
            )  # fmt: skip
            async with DaemonProcess(config, tmp_path) as daemon:
                for name in ("house", "flat"):
                    await subscriber.wait_for(f"amsd/{name}/state", count=FRAMES, timeout=WAIT)
                    await wait_parsed(subscriber, name, FRAMES)
                code, _ = await daemon.stop()
            assert code == 0, daemon.output()

        for name in ("house", "flat"):
            states = [json.loads(p) for p in subscriber.on(f"amsd/{name}/state")]
            parsed = parsed_for(subscriber, name)
            assert len(parsed) == len(states) == FRAMES, name  # none lost, none added
            for state, out in zip(states, parsed, strict=True):  # in order
                for field in ("ts", "received", "meter_id"):
                    assert out[field] == state[field], (name, field)
                assert_numbers_equal(out, expected_from_state(state))

        house, flat = parsed_for(subscriber, "house"), parsed_for(subscriber, "flat")
        assert "energy_import_kwh" in house[0]  # list 3
        assert any("energy_import_kwh" not in m and is_json_number(m.get("power_w")) for m in house)  # list 1
        assert all("energy_import" not in json.loads(p) for p in subscriber.on("amsd/flat/state"))
        assert all(is_json_number(m["energy_import_kwh"]) for m in flat)  # summed from the tariffs

        # The flow's HTTP endpoint serves the last values per meter.
        last = await runtime.get_json("/amsd/last")
        assert last == {"probe": answer, "house": house[-1], "flat": flat[-1]}


async def test_flow_reads_the_amsreader_payload(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    async with node_red(broker, tmp_path / "node-red"):
        await flow_is_subscribed(broker, subscriber, {"power_import": 1})
        kamstrup = await serve_tcp("kamstrup-no", speed=100, pacing=False, wait_for_client=True, frames=FRAMES)
        async with simulators(kamstrup):
            config = write_config(
                tmp_path, broker.port, [meter("esp", kamstrup.address)],
                mqtt={"payload_format": "amsreader"}, homeassistant=False,
            )  # fmt: skip
            async with DaemonProcess(config, tmp_path) as daemon:
                await subscriber.wait_for("amsd/esp/state", count=FRAMES, timeout=WAIT)
                await wait_parsed(subscriber, "esp", FRAMES)
                code, _ = await daemon.stop()
            assert code == 0, daemon.output()

    messages = [json.loads(p) for p in subscriber.on("amsd/esp/state")]
    parsed = parsed_for(subscriber, "esp")
    assert len(parsed) == len(messages) == FRAMES
    for message, out in zip(messages, parsed, strict=True):
        data = message["data"]
        state = {"power_import": data.get("P"), "power_export": data.get("PO"),
                 "energy_import": data.get("tPI"), "energy_export": data.get("tPO")}  # fmt: skip
        assert_numbers_equal(out, expected_from_state({k: v for k, v in state.items() if v is not None}))
        assert out["meter_id"] == data["id"]
        assert datetime.fromisoformat(out["ts"]) == datetime.fromtimestamp(data["rtc"], UTC)
    assert "energy_import_kwh" in parsed[0]  # Kamstrup list 3 comes first, with the counters
