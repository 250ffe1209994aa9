"""Shared fixtures: a real Mosquitto broker and an MQTT subscriber that waits on messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import settings

from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker


@pytest.fixture
def clean_config_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No `AMSD_*__*` overrides, systemd credential or state directory from the outside leak into a
    configuration test; registered secrets are forgotten after it."""
    from amsd import log as amsd_log

    for name in list(os.environ):
        if name.upper().startswith("AMSD_") and "__" in name:
            monkeypatch.delenv(name)
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    yield
    amsd_log.clear_secrets()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip(SKIP_REASON)
    with Broker(tmp_path) as running:
        yield running


@dataclass
class Subscriber:
    """Collects every message on the broker; `wait_for` blocks until a matching one arrived."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _add(self, topic: str, payload: bytes, retain: bool) -> None:
        async with self._changed:
            self.messages.append((topic, payload, retain))
            self._changed.notify_all()

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait_for(
        self,
        topic: str,
        predicate: Callable[[bytes], bool] = lambda _: True,
        timeout: float = 10.0,
        count: int = 1,
    ) -> list[bytes]:
        def matches() -> list[bytes]:
            return [p for p in self.on(topic) if predicate(p)]

        async def wait() -> list[bytes]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(matches()) >= count)
                return matches()

        return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def subscriber(broker: Broker) -> AsyncIterator[Subscriber]:
    collected = Subscriber()
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="test-subscriber") as client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                await collected._add(str(message.topic), payload, bool(message.retain))

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield collected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


# CI runs must not depend on luck: the same examples every run (set HYPOTHESIS_PROFILE=dev to explore).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
