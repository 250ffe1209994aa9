"""Shared pieces of the fault-injection suite (tests/e2e/test_faults_*.py).

- `AmsdProcess`: `python -m amsd run` as a real process (kill -9 needs one), its stderr kept in a file
  and registered with the session's secret scan.
- `TimedSubscriber`: every message with the monotonic time it arrived, for resume-time measurements.
- `SecretScan`: the secrets each test configured and the logs it produced; every log of the session is
  scanned for every secret, in every spelling a key could be logged in.
- sequence helpers: the simulated meter's clock is monotonic and unique per message, so a published
  `ts` maps back to the simulator's message index (`FrameRecord.index`), the sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from amsd.sim.simulate import FrameRecord
from tests.e2e.test_daemon_e2e import clean_env, listening_into, toml_document
from tests.mosquitto import Broker

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # generous: only a failing test waits this long


# ------------------------------------------------------------------------------------- secrets


def secret_spellings(secret: bytes | str) -> set[str]:
    """Every way a secret could show up in a log: a key as hex in either case, with or without
    separators or 0x prefixes per byte, Python's bytes repr, or the first half of any of them; a
    password as is, as repr and JSON-escaped."""
    if isinstance(secret, str):
        return {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    spellings: set[str] = set()
    for part in (secret, secret[: len(secret) // 2]):
        pairs = [f"{b:02x}" for b in part]
        for case in (str.lower, str.upper):
            cased = [case(p) for p in pairs]
            for separator in ("", " ", ":", "-", ","):
                spellings.add(separator.join(cased))
            spellings.add("".join("0x" + p for p in cased))
            spellings.add(" ".join("0x" + p for p in cased))
            spellings.add("".join("\\x" + p for p in cased))
    spellings.add(repr(secret)[2:-1])
    return spellings


@dataclass
class SecretScan:
    """Collected over the session: (secret, where it was configured) and every log file written."""

    secrets: list[tuple[bytes | str, str]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def add_secret(self, secret: bytes | str, where: str) -> None:
        self.secrets.append((secret, where))

    def findings(self, texts: Iterable[tuple[str, str]] | None = None) -> list[str]:
        """`(source, secret origin)` pairs for every secret found in any log (or in `texts`)."""
        sources = (
            list(texts)
            if texts is not None
            else [(str(p), p.read_text(errors="replace")) for p in self.logs if p.exists()]
        )
        found = []
        for secret, where in self.secrets:
            spellings = secret_spellings(secret)
            for source, text in sources:
                if any(s in text for s in spellings):
                    found.append(f"{where} found in {source}")
        return found


SESSION_SCAN = SecretScan()


# ------------------------------------------------------------------------------------- config


def write_config(
    path: Path,
    *,
    broker_port: int,
    meters: list[dict[str, object]],
    outbox: Path,
    mqtt: dict[str, object] | None = None,
    outbox_max: int | None = None,
) -> Path:
    sections: dict[str, dict[str, object]] = {
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": f"amsd-faults-{broker_port}", **(mqtt or {})},
        "homeassistant": {"enabled": False},
        "outbox": {"path": str(outbox), **({"max_messages": outbox_max} if outbox_max else {})},
        "log": {"level": "info", "format": "json"},
    }
    path.write_text(toml_document(sections, meters), encoding="utf-8")
    path.chmod(0o600)  # it holds secrets: amsd warns otherwise
    return path


# ------------------------------------------------------------------------------------- daemon


class AmsdProcess:
    """`python -m amsd run -c CONFIG`; stdout and stderr to files registered with the secret scan."""

    def __init__(self, config: Path, workdir: Path, name: str = "amsd", env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = clean_env(env)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        SESSION_SCAN.logs += [self.stdout_path, self.stderr_path]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> AmsdProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "amsd", "run", "-c", str(self.config),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=self.env,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def __aenter__(self) -> AmsdProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 15)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path) if p.exists())

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        events = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    events.append(parsed)
        return events

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


# ------------------------------------------------------------------------------------- MQTT


@dataclass
class TimedSubscriber:
    """Every message with its arrival time (time.monotonic()); `wait_for` blocks on a condition."""

    messages: list[tuple[float, str, bytes]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _add(self, topic: str, payload: bytes, retain: bool) -> None:
        async with self._changed:
            self.messages.append((time.monotonic(), topic, payload))
            self._changed.notify_all()

    def on(self, topic: str) -> list[bytes]:
        return [p for _, t, p in self.messages if t == topic]

    def timed(self, topic: str) -> list[tuple[float, bytes]]:
        return [(at, p) for at, t, p in self.messages if t == topic]

    async def until(
        self, condition: Callable[[], bool], timeout: float = WAIT, context: Callable[[], str] | None = None
    ) -> None:
        """Wait until `condition()` holds; on timeout fail with `context()` (what the test knows then)."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(condition)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met in {timeout} s: {context() if context else ''}") from None


def timed_listener(
    broker: Broker,
    topic: str = "#",
    *,
    identifier: str = "faults-listener",
    username: str | None = None,
    password: str | None = None,
) -> contextlib.AbstractAsyncContextManager[TimedSubscriber]:
    """A persistent-session subscriber that reconnects whenever the broker comes back; with a broker
    that has persistence it misses nothing published while it was away."""
    return listening_into(
        TimedSubscriber(),
        broker,
        topic,
        identifier=identifier,
        clean_session=False,
        username=username,
        password=password,
    )


async def eventually(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02) -> None:
    """Wait, bounded, for state outside this process that offers no event (a file, /proc)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(interval)

    await asyncio.wait_for(poll(), timeout)


# ------------------------------------------------------------------------------------- sequences


def time_key(moment: datetime) -> str:
    """Aware times compare in UTC; a naive one (a meter that sends no offset) is local wall time."""
    return moment.astimezone(UTC).isoformat() if moment.tzinfo else moment.isoformat()


def sequence_of(records: Iterable[FrameRecord]) -> dict[str, int]:
    """Published `ts` key -> the simulator's message index (its sequence number)."""
    index: dict[str, int] = {}
    for r in records:
        index[time_key(r.meter_time)] = r.index
        index[time_key(r.meter_time.replace(tzinfo=None))] = r.index
    return index


def published_sequence(payloads: Iterable[bytes], index: dict[str, int]) -> list[int]:
    """Sequence numbers of published state messages, in arrival order (duplicates kept)."""
    numbers = []
    for payload in payloads:
        ts = json.loads(payload)["ts"]
        assert ts is not None, payload
        key = time_key(datetime.fromisoformat(ts))
        assert key in index, f"published reading {ts} was never sent"
        numbers.append(index[key])
    return numbers


def first_occurrences(numbers: Iterable[int]) -> list[int]:
    seen: set[int] = set()
    ordered = []
    for n in numbers:
        if n not in seen:
            seen.add(n)
            ordered.append(n)
    return ordered


def outbox_rows(path: Path, topic: str | None = None) -> list[bytes]:
    """Payloads stored in amsd's outbox (read-only; WAL lets a reader look while amsd writes)."""
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            if topic is None:
                rows = db.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT payload FROM outbox WHERE topic = ? ORDER BY id", (topic,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []  # not created yet, or busy: the caller polls again
    return [bytes(r[0]) for r in rows]


def outbox_dropped(path: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'dropped'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0
