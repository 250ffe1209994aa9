"""`amsd run` end to end: simulated meters on real ptys and TCP bridges, a real Mosquitto, the daemon as
a real process (signals, exit codes, output) or in-process where the test needs its internals.

Every wait is on an event (an MQTT message, a process exit, a simulator frame count), bounded by
asyncio.wait_for; simulators run fast (high speed, no byte pacing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiomqtt
import pytest

from amsd.config import AmsdConfig, HomeAssistantConfig, MeterConfig, MqttConfig, OutboxConfig
from amsd.daemon import Daemon
from amsd.payloads import METER_TIME_KEY, VALUE_KEYS, readable_key
from amsd.sim.meters import MeterSimulator, SimFrame
from amsd.sim.simulate import FrameRecord, SimServer, serve_pty, serve_tcp
from tests.conftest import Subscriber
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

REPO = Path(__file__).resolve().parents[2]
WAIT = 15.0  # generous: only a failing test waits this long
STOP_LIMIT_S = 10.0  # DESIGN.md section 5: SIGTERM ends the process within 10 s
# 200 characters a user might really have in a password: quotes, backslashes, TOML/INI/shell specials,
# spaces, non-ASCII (2-, 3- and 4-byte UTF-8).
WEIRD_PASSWORD = ("q\"u'o\\te #=x y;z,{}[]$`!|&<>%:@ ÄÖÜ€ 漢字 😀 " * 6)[:200]
WEIRD_USER = "amsd mëter"
META_TOPICS = frozenset(("state", "obis", "raw", "availability", "diagnostics"))
LAYERS = frozenset(("hdlc", "mbus", "gbt", "cipher", "apdu", "dsmr", "stream", "llc", "frame"))


# ------------------------------------------------------------------------------------- helpers


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes: \" \\ \uXXXX), non-ASCII kept as is.
    return json.dumps(str(value), ensure_ascii=False)


def meter(name: str, port: str, **settings: object) -> dict[str, object]:
    return {"name": name, "port": port, **settings}


def write_config(
    tmp_path: Path,
    broker_port: int,
    meters: list[dict[str, object]],
    *,
    mqtt: dict[str, object] | None = None,
    homeassistant: bool = True,
) -> Path:
    sections: dict[str, dict[str, object]] = {
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": f"amsd-e2e-{broker_port}", **(mqtt or {})},
        "homeassistant": {"enabled": homeassistant},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "log": {"level": "info", "format": "json"},
    }
    path = tmp_path / "amsd.toml"
    path.write_text(toml_document(sections, meters), encoding="utf-8")
    return path


def toml_document(sections: dict[str, dict[str, object]], meters: list[dict[str, object]]) -> str:
    """An amsd config file: the given tables, then one `[[meters]]` table per meter."""
    lines: list[str] = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    for entry in meters:
        lines.append("[[meters]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without any amsd configuration, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("AMSD_") and k not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")
    }
    env.update(extra or {})
    return env


class DaemonProcess:
    """`python -m amsd run -c CONFIG` as a real process; stdout/stderr go to files (never a full pipe)."""

    def __init__(self, config: Path, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = clean_env(env)
        self.stdout_path = tmp_path / "amsd.stdout"
        self.stderr_path = tmp_path / "amsd.stderr"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> DaemonProcess:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "amsd", "run", "-c", str(self.config),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=self.env,
            )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `sig`; returns the exit code and the seconds the process took to end."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), STOP_LIMIT_S + 5)
        return code, time.monotonic() - started

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def simulators(*servers: SimServer) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for server in servers:
            await asyncio.wait_for(server.stop(), WAIT)


class MessageCollector(Protocol):
    async def _add(self, topic: str, payload: bytes, retain: bool) -> None: ...


CollectorT = TypeVar("CollectorT", bound=MessageCollector)


def listening(
    broker: Broker,
    topic: str = "#",
    *,
    identifier: str = "e2e-listener",
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> contextlib.AbstractAsyncContextManager[Subscriber]:
    """A subscriber that reconnects when the broker goes away (with `clean_session=False` and a broker with
    persistence it misses nothing published while it was away)."""
    return listening_into(
        Subscriber(),
        broker,
        topic,
        identifier=identifier,
        clean_session=clean_session,
        username=username,
        password=password,
    )


@contextlib.asynccontextmanager
async def listening_into(
    collected: CollectorT,
    broker: Broker,
    topic: str | tuple[str, ...] = "#",
    *,
    identifier: str = "e2e-listener",
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[CollectorT]:
    """`listening`, delivering every message to `collected`; `topic` may be several filters."""
    topics = (topic,) if isinstance(topic, str) else topic
    ready = asyncio.Event()

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=identifier,
                    clean_session=clean_session,
                    username=username,
                    password=password,
                ) as client:
                    for subscription in topics:
                        await client.subscribe(subscription, qos=1)
                    ready.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        await collected._add(str(message.topic), payload, bool(message.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # broker down: retry shortly

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        yield collected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retained(broker: Broker, topic: str) -> bytes:
    """The retained message a client connecting now gets on `topic` (fails if there is none)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"probe-{time.monotonic_ns()}") as client:
        await client.subscribe(topic, qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), WAIT)
        assert message.retain, f"{topic}: not retained"
        assert isinstance(message.payload, bytes)
        return message.payload


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait, bounded, for state owned by another task that offers no event to await."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def same_meter_time(ts: str | None, record: FrameRecord | SimFrame) -> bool:
    """A decoded `ts` equals the simulated meter clock (local wall time when the meter sends no offset)."""
    if ts is None:
        return False
    moment = datetime.fromisoformat(ts)
    if moment.tzinfo is None:
        return moment == record.meter_time.replace(tzinfo=None)
    return moment == record.meter_time


def record_for(ts: str | None, records: Iterable[FrameRecord]) -> FrameRecord | None:
    return next((r for r in records if same_meter_time(ts, r)), None)


def assert_values_match(obis: dict[str, Any], state: dict[str, Any], record: FrameRecord) -> None:
    """`obis` carries every expected value with its unit; `state` its readable keys with the same numbers."""
    assert obis["ts"] == state["ts"]
    assert state["meter_id"] == record.meter_id == obis["meter_id"]
    for code, expected in record.expected.items():
        assert obis["values"].get(code) == {"value": expected.value, "unit": expected.unit}, (record.index, code)
        key = readable_key(code)
        if key is not None and isinstance(expected.value, int | float):
            assert state[key] == expected.value, (record.index, key)


def json_messages(subscriber: Subscriber, topic: str) -> list[Any]:
    return [json.loads(payload) for payload in subscriber.on(topic)]


# ------------------------------------------------------------------------------------- 1. two meters


async def test_two_meters_pty_8n1_and_socket_8e1_publish_the_simulated_values(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    kamstrup = await serve_pty("kamstrup-no", speed=100, pacing=False, seed=11)
    aidon = await serve_tcp("aidon-no", speed=100, pacing=False, wait_for_client=True, seed=12)
    async with simulators(kamstrup, aidon):
        config = write_config(
            tmp_path,
            broker.port,
            [
                meter("kitchen", kamstrup.address, baudrate=2400, parity="N"),
                # 8E1 as on the meter's M-Bus side; the TCP bridge owns the framing.
                meter("garage", aidon.address, baudrate=2400, parity="E", bytesize=8, stopbits=1),
            ],
        )
        async with DaemonProcess(config, tmp_path) as daemon:
            await subscriber.wait_for("amsd/kitchen/obis", count=8, timeout=WAIT)
            await subscriber.wait_for("amsd/garage/obis", count=12, timeout=WAIT)
            code, _ = await daemon.stop()
        assert code == 0, daemon.output()

        # Kamstrup over a pty: readings before the daemon opened the line are gone (a serial port has no
        # history), so match on the meter clock; from the first one on, none may be missing.
        obis = json_messages(subscriber, "amsd/kitchen/obis")
        states = json_messages(subscriber, "amsd/kitchen/state")
        assert len(obis) == len(states) >= 8
        matched = []
        for obis_payload, state in zip(obis, states, strict=True):
            record = record_for(obis_payload["ts"], kamstrup.records)
            assert record is not None and not record.corrupted, obis_payload["ts"]
            assert_values_match(obis_payload, state, record)
            matched.append(record.index)
        assert matched == list(range(matched[0], matched[0] + len(matched)))

        # Aidon over TCP: the simulator waited for the daemon, so reading i is message i (list 1 has no clock).
        obis = json_messages(subscriber, "amsd/garage/obis")
        states = json_messages(subscriber, "amsd/garage/state")
        assert len(obis) == len(states) >= 12
        records = list(aidon.records)
        for index, (obis_payload, state) in enumerate(zip(obis, states, strict=True)):
            assert_values_match(obis_payload, state, records[index])
        assert {r.list_name for r in records[: len(obis)]} >= {"list1", "list2", "list3"}

        assert not subscriber.on("amsd/kitchen/raw") or all(
            json.loads(p)["error"] in ("truncated", "noise", "cut_short") for p in subscriber.on("amsd/kitchen/raw")
        )  # at most the piece of a frame cut by opening the pty mid-frame
        assert not subscriber.on("amsd/garage/raw")


# ------------------------------------------------------------------------------------- 2. corrupted frame


def flip_in_information_field(frame: bytes) -> bytes:
    """One byte of a single HDLC frame's information field changed: the header check passes, the FCS fails."""
    assert frame[0] == frame[-1] == 0x7E and ((frame[1] & 0x07) << 8 | frame[2]) == len(frame) - 2
    position = len(frame) // 2
    flipped = frame[position] ^ 0x5A
    return frame[:position] + bytes((flipped,)) + frame[position + 1 :]


async def test_corrupted_frame_is_published_on_raw_with_layer_and_error(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    simulator = MeterSimulator("kamstrup-no", seed=5)
    good_before, damaged, good_after = (simulator.next_frame() for _ in range(3))
    corrupted = flip_in_information_field(damaged.data)
    sent = asyncio.Event()

    async def bridge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(good_before.data + corrupted + good_after.data)
        await writer.drain()
        sent.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # keep the line open until the daemon hangs up
        writer.close()

    server = await asyncio.start_server(bridge, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        config = write_config(tmp_path, broker.port, [meter("m", f"socket://127.0.0.1:{port}")])
        async with DaemonProcess(config, tmp_path) as daemon:
            raw = await subscriber.wait_for("amsd/m/raw", timeout=WAIT)
            states = await subscriber.wait_for("amsd/m/state", count=2, timeout=WAIT)
            assert sent.is_set()
            code, _ = await daemon.stop()
        assert code == 0
    finally:
        server.close()

    report = json.loads(raw[0])
    assert report["layer"] == "hdlc" and report["error"] == "fcs_error", report
    assert report["hex"] == corrupted.hex().upper()
    datetime.fromisoformat(report["ts"])  # when it was received
    assert isinstance(report["detail"], str | None)
    timestamps = [json.loads(s)["ts"] for s in states]
    assert len(timestamps) == 2
    assert same_meter_time(timestamps[0], good_before) and same_meter_time(timestamps[1], good_after)
    assert len(subscriber.on("amsd/m/raw")) == 1  # the good frames around it were not disturbed


# ------------------------------------------------------------------------------------- 3. status and SIGTERM


async def test_status_online_retained_then_offline_on_sigterm_exit_0(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    sim = await serve_tcp("kamstrup-no", speed=50, pacing=False, wait_for_client=True)
    async with simulators(sim):
        config = write_config(tmp_path, broker.port, [meter("m", sim.address)])
        async with DaemonProcess(config, tmp_path) as daemon:
            await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
            assert await retained(broker, "amsd/status") == b"online"
            await subscriber.wait_for("amsd/m/state", count=2, timeout=WAIT)
            assert await retained(broker, "amsd/m/availability") == b"online"
            # The daemon runs as a re-executed image of itself (same PID) that never loaded
            # pydantic-settings, and has closed the memory file that carried its configuration.
            assert daemon.process is not None
            assert b"--config-fd" in Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
            fds = Path(f"/proc/{daemon.process.pid}/fd")
            assert not any("amsd-config" in os.readlink(fd) for fd in fds.iterdir() if fd.exists())
            # Nor pydantic: it takes a plain RunConfig (amsd/runconfig.py), so pydantic_core's
            # extension module is not mapped.
            assert "_pydantic_core" not in Path(f"/proc/{daemon.process.pid}/maps").read_text()
            code, took = await daemon.stop(signal.SIGTERM)
        assert code == 0, daemon.output()
        assert took < STOP_LIMIT_S

    assert subscriber.on("amsd/status")[-1] == b"offline"
    assert await retained(broker, "amsd/status") == b"offline"
    assert await retained(broker, "amsd/m/availability") == b"offline"
    daemon_topics = [t for t, _, _ in subscriber.messages if t.startswith("amsd/")]
    assert daemon_topics[-1] == "amsd/status"  # `offline` is the last word: everything else was flushed first
    output = daemon.output()
    assert "Traceback" not in output
    assert '"amsd running"' in output or "amsd running" in output


async def test_killed_daemon_goes_offline_through_the_will(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    sim = await serve_tcp("kamstrup-no", speed=50, pacing=False)
    async with simulators(sim):
        config = write_config(tmp_path, broker.port, [meter("m", sim.address)], homeassistant=False)
        async with DaemonProcess(config, tmp_path) as daemon:
            await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
            code, _ = await daemon.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        await subscriber.wait_for("amsd/status", lambda p: p == b"offline", timeout=WAIT)
        assert await retained(broker, "amsd/status") == b"offline"


# ------------------------------------------------------------------------------------- 4. config errors

BAD_KEY = "5ec2e75ec2e75ec2e75ec2e75ec2e7zz"  # 32 characters, not hex
GOOD_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # valid, but under a misspelled name
PASSWORD = "hunter2-do-not-print"


@pytest.mark.parametrize(
    ("toml", "env", "expected", "secrets"),
    [
        pytest.param(
            f'[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\nencryption_key = "{BAD_KEY}"\n',
            {},
            "meters[0].encryption_key",
            [BAD_KEY],
            id="bad-key",
        ),
        pytest.param(
            f'[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\nauthentication_key = "{GOOD_KEY[:30]}"\n',
            {},
            "meters[0].authentication_key",
            [GOOD_KEY[:30]],
            id="short-key",
        ),
        pytest.param(
            '[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\n',
            {"AMSD_METERS__0__ENCRYPTION_KEY": BAD_KEY},
            "AMSD_METERS__0__ENCRYPTION_KEY",
            [BAD_KEY],
            id="bad-key-from-env",
        ),
        pytest.param(
            f'[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\nencryption_kye = "{GOOD_KEY}"\n',
            {},
            "meters[0].encryption_kye: unknown key",
            [GOOD_KEY],
            id="misspelled-key-field",
        ),
        pytest.param(
            f'[mqtt]\npassword = "{PASSWORD}"\nhots = "broker"\n[[meters]]\nname = "m"\nport = "/dev/ttyUSB0"\n',
            {},
            "mqtt.hots: unknown key",
            [PASSWORD],
            id="unknown-field",
        ),
        pytest.param(None, {}, "no such file", [], id="missing-file"),
        pytest.param(f'[mqtt]\npassword = "{PASSWORD}"\n', {}, "no meters configured", [PASSWORD], id="no-meters"),
    ],
)
def test_config_errors_exit_2_without_echoing_secrets(
    tmp_path: Path, toml: str | None, env: dict[str, str], expected: str, secrets: list[str]
) -> None:
    path = tmp_path / "amsd.toml"
    if toml is not None:
        path.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "amsd", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=WAIT, cwd=REPO, env=clean_env(env),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("amsd: config error:"), result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for secret in secrets:
        for text in (result.stdout, result.stderr):
            assert secret not in text and secret[:12] not in text


# ------------------------------------------------------------------------------------- 5. credentials


@pytest.mark.parametrize("source", ["toml", "env"])
async def test_any_characters_in_credentials_connect(tmp_path: Path, source: str) -> None:
    with Broker(tmp_path / "broker", users={WEIRD_USER: WEIRD_PASSWORD}) as broker:
        mqtt: dict[str, object] = {"username": WEIRD_USER}
        env: dict[str, str] = {}
        if source == "toml":
            mqtt["password"] = WEIRD_PASSWORD
        else:
            env["AMSD_MQTT__PASSWORD"] = WEIRD_PASSWORD
        sim = await serve_tcp("kamstrup-no", speed=50, pacing=False, wait_for_client=True)
        async with simulators(sim), listening(broker, username=WEIRD_USER, password=WEIRD_PASSWORD) as subscriber:
            config = write_config(tmp_path, broker.port, [meter("m", sim.address)], mqtt=mqtt)
            async with DaemonProcess(config, tmp_path, env) as daemon:
                await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
                states = await subscriber.wait_for("amsd/m/state", count=2, timeout=WAIT)
                code, _ = await daemon.stop()
        assert code == 0
        assert same_meter_time(json.loads(states[0])["ts"], sim.records[0])
        output = daemon.output()
        assert WEIRD_PASSWORD not in output and WEIRD_PASSWORD[:16] not in output
        assert "not authorised" not in output.lower() and "not authorized" not in output.lower()


async def test_wrong_password_keeps_retrying_quietly_and_stops_cleanly(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", users={WEIRD_USER: WEIRD_PASSWORD}) as broker:
        wrong = WEIRD_PASSWORD[::-1]
        sim = await serve_tcp("kamstrup-no", speed=50, pacing=False, wait_for_client=True)
        async with simulators(sim):
            config = write_config(tmp_path, broker.port, [meter("m", sim.address)], mqtt={"username": WEIRD_USER})
            async with DaemonProcess(config, tmp_path, {"AMSD_MQTT__PASSWORD": wrong}) as daemon:
                await asyncio.wait_for(sim.wait_frames(5), WAIT)  # the daemon is reading, the broker refuses it
                await eventually(lambda: "mqtt unavailable" in daemon.output())
                code, took = await daemon.stop()
        assert code == 0 and took < STOP_LIMIT_S
        output = daemon.output()
        assert wrong not in output and wrong[:16] not in output and WEIRD_PASSWORD[:16] not in output


# ------------------------------------------------------------------------------------- 6. data topics hygiene


def check_topic(topic: str, payload: bytes, meters: set[str]) -> None:
    """Every message the daemon publishes is data of the kind its topic promises, nothing else."""
    parts = topic.split("/")
    if topic == "amsd/status" or (len(parts) == 3 and parts[2] == "availability"):
        assert payload in (b"online", b"offline"), (topic, payload)
        return
    if parts[0] == "homeassistant":
        assert parts[1:3] == ["device", parts[2]] and parts[-1] == "config", topic
        assert isinstance(json.loads(payload), dict)
        return
    assert parts[0] == "amsd" and len(parts) == 3 and parts[1] in meters, topic
    kind = parts[2]
    if kind not in META_TOPICS:
        assert kind in VALUE_KEYS, topic
        if kind == METER_TIME_KEY:  # the meter clock: ISO 8601 with an offset (a HA timestamp sensor)
            assert datetime.fromisoformat(payload.decode("ascii")).tzinfo is not None, (topic, payload)
        else:
            assert math.isfinite(float(payload.decode("ascii"))), (topic, payload)
        return
    body = json.loads(payload)
    assert isinstance(body, dict), (topic, payload)
    if kind == "state":
        assert set(body) >= {"ts", "received", "meter_id", "model"}
        assert body["ts"] is None or isinstance(datetime.fromisoformat(body["ts"]), datetime)
        datetime.fromisoformat(body["received"])
        for key, value in body.items():
            if key not in ("ts", "received", "meter_id", "model"):
                assert key in VALUE_KEYS, (topic, key)
                assert isinstance(value, int | float) and not isinstance(value, bool), (topic, key, value)
    elif kind == "obis":
        assert isinstance(body["values"], dict) and body["values"]
        for code, item in body["values"].items():
            assert set(item) == {"value", "unit"}, (code, item)
            assert readable_key(code) is None or isinstance(item["value"], int | float), (code, item)
    elif kind == "raw":
        assert body["layer"] in LAYERS and isinstance(body["error"], str), body
        assert body["hex"] == body["hex"].upper() and bytes.fromhex(body["hex"]), body
        datetime.fromisoformat(body["ts"])
    elif kind == "diagnostics":
        assert {"frames_ok", "crc_errors", "outbox_depth", "serial_state"} <= set(body), body


async def test_data_topics_carry_only_data_across_a_noisy_run(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    kamstrup = await serve_pty("kamstrup-no", speed=100, pacing=False, noise=0.3, seed=21)
    aidon = await serve_tcp("aidon-no", speed=100, pacing=False, noise=0.3, wait_for_client=True, seed=22)
    async with simulators(kamstrup, aidon):
        config = write_config(
            tmp_path,
            broker.port,
            [meter("kitchen", kamstrup.address), meter("garage", aidon.address, parity="E")],
            mqtt={"retain_values": True},
        )
        async with DaemonProcess(config, tmp_path) as daemon:
            for name in ("kitchen", "garage"):
                await subscriber.wait_for(f"amsd/{name}/state", count=12, timeout=WAIT)
                # A damaged frame fails its link-layer check (stream/noise is the garbage between frames).
                await subscriber.wait_for(f"amsd/{name}/raw", lambda p: json.loads(p)["layer"] == "hdlc", timeout=WAIT)
            discovery = f"homeassistant/device/amsd_{kamstrup.records[0].meter_id}/config"
            await subscriber.wait_for(discovery, timeout=WAIT)
            code, _ = await daemon.stop()
        assert code == 0
    assert kamstrup.frames_corrupted and aidon.frames_corrupted

    assert len(subscriber.messages) > 100
    for topic, payload, _ in subscriber.messages:
        check_topic(topic, payload, {"kitchen", "garage"})
    # A frame the simulator damaged never turns into a reading; an intact one decodes to what was sent.
    for obis_payload, state in zip(
        json_messages(subscriber, "amsd/kitchen/obis"), json_messages(subscriber, "amsd/kitchen/state"), strict=True
    ):
        record = record_for(obis_payload["ts"], kamstrup.records)
        assert record is not None and not record.corrupted
        assert_values_match(obis_payload, state, record)
    errors = {(json.loads(p)["layer"], json.loads(p)["error"]) for p in subscriber.on("amsd/kitchen/raw")}
    assert any(layer == "hdlc" for layer, _ in errors), errors
    assert all(re.fullmatch(r"[a-z][a-z_]*", error) for _, error in errors), errors  # short snake_case codes
    output = daemon.output()
    assert "Traceback" not in output


# ------------------------------------------------------------------------------------- 7. broker outage


async def test_broker_down_and_back_every_reading_arrives_in_order(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=True).start()
    restarted = Broker(tmp_path / "broker", port=broker.port, persistence=True)
    sim = await serve_tcp("kamstrup-no", speed=100, pacing=False, wait_for_client=True, seed=31)
    config = AmsdConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id="amsd-e2e-outage"),
        homeassistant=HomeAssistantConfig(enabled=False),
        outbox=OutboxConfig(path=tmp_path / "outbox.sqlite3"),
        meters=[MeterConfig(name="m", port=sim.address)],
    ).for_run()
    daemon = Daemon(config)
    # The publisher's reconnect backoff starts at 1 s; this only makes the test faster.
    publisher = daemon.publisher
    publisher._backoff_initial, publisher._backoff_max = 0.1, 0.3  # type: ignore[attr-defined]
    pipeline = daemon.pipelines[0]
    running: asyncio.Task[int] | None = None
    try:
        async with simulators(sim), listening(broker, "amsd/m/#", identifier="outage", clean_session=False) as sub:
            running = asyncio.create_task(daemon.run())
            await sub.wait_for("amsd/m/state", count=3, timeout=WAIT)

            broker.stop()
            await eventually(lambda: not publisher.stats()["mqtt_connected"])
            down_from = sim.frames_sent
            await asyncio.wait_for(sim.wait_frames(down_from + 20), WAIT)
            down_to = sim.frames_sent
            await eventually(lambda: pipeline.counters["frames_ok"] >= down_to)
            assert publisher.stats()["outbox_depth"] >= 20  # state + obis of each reading, on disk

            restarted.start()
            await eventually(lambda: publisher.stats()["mqtt_connected"] and publisher.stats()["outbox_depth"] == 0)
            # Live readings continue after the backlog.
            await asyncio.wait_for(sim.wait_frames(down_to + 6), WAIT)
            after = sim.records[down_to + 5]
            await sub.wait_for("amsd/m/state", lambda p: same_meter_time(json.loads(p)["ts"], after), timeout=WAIT)
            # Diagnostics show the outbox emptied again, not only the backlog at the moment of reconnecting
            # (which the daemon sent before the replay and which arrived before the replayed readings).
            diagnostics = [json.loads(p) for p in sub.on("amsd/m/diagnostics")]
            assert any(d["outbox_depth"] > 0 for d in diagnostics), diagnostics

            def drained(payload: bytes) -> bool:
                return bool(json.loads(payload)["outbox_depth"] == 0)

            zero_so_far = sum(1 for d in diagnostics if d["outbox_depth"] == 0)
            await sub.wait_for("amsd/m/diagnostics", drained, count=zero_so_far + 1, timeout=WAIT)
            last = json.loads(sub.on("amsd/m/diagnostics")[-1])
            assert last["outbox_depth"] == 0 and last["serial_state"] == "open", last
            # `dropped` also counts the live-only single-value messages skipped while the broker was away;
            # no reading (state/obis) was dropped from the outbox.
            assert publisher.outbox.dropped == 0  # type: ignore[attr-defined]

            daemon.request_stop()
            assert await asyncio.wait_for(running, STOP_LIMIT_S) == 0
    finally:
        if running is not None and not running.done():
            daemon.request_stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(running, STOP_LIMIT_S)
        restarted.stop()
        broker.stop()

    # QoS 1 is at least once: a message in flight when the broker died may come twice; never out of order.
    seen: list[str] = []
    for payload in sub.on("amsd/m/state"):
        ts = json.loads(payload)["ts"]
        if ts not in seen:
            seen.append(ts)
    records = list(sim.records)
    expected = [r for r in records if r.index < len(seen)]
    assert [same_meter_time(ts, r) for ts, r in zip(seen, expected, strict=True)] == [True] * len(seen)
    assert len(seen) > down_to + 5 and publisher.stats()["outboxed"] >= 40


# ------------------------------------------------------------------------------------- 8. unplug


async def test_unplugged_line_is_reopened_and_availability_follows(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    link = tmp_path / "ttyAMS0"
    # A drop every 2 s of line time; the daemon reopens after its 1 s backoff.
    sim = await serve_pty("kamstrup-no", speed=50, pacing=False, drop_every=10, link=str(link), seed=41)
    async with simulators(sim):
        config = write_config(tmp_path, broker.port, [meter("m", str(link))], homeassistant=False)
        async with DaemonProcess(config, tmp_path) as daemon:
            availability = await subscriber.wait_for("amsd/m/availability", count=3, timeout=WAIT)
            assert availability[:3] == [b"online", b"offline", b"online"]
            reopened_at = len(subscriber.on("amsd/m/state"))
            await subscriber.wait_for("amsd/m/state", count=reopened_at + 2, timeout=WAIT)
            code, _ = await daemon.stop()
        assert code == 0
    assert sim.drops >= 1
    states = [json.loads(p)["ts"] for p in subscriber.on("amsd/m/state")]
    assert states == sorted(states) and len(set(states)) == len(states)
    assert all(record_for(ts, sim.records) for ts in states)
    serial_states = [json.loads(p)["serial_state"] for p in subscriber.on("amsd/m/diagnostics")]
    assert "open" in serial_states and "waiting_retry" in serial_states, serial_states
    lost = next(i for i, s in enumerate(serial_states) if s == "waiting_retry")
    assert "open" in serial_states[lost:]
