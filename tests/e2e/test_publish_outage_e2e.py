"""The publisher under harder conditions: the broker dies with messages in flight, and a 200-character
password full of quoting hazards (users paste anything into a config file or a systemd credential)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from amsd.outbox import Outbox
from amsd.publish import OutMessage, Publisher, PublisherSettings
from tests.conftest import Subscriber
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

# Quotes, backslash, '#', '=', ':', spaces, shell and TOML specials, non-ASCII; exactly 200 characters.
WEIRD_PASSWORD = ("p\"a's\\s #=w:o;r,d {}[]$`!|&<> ÄÖÜ€ 漢字 " * 8)[:200]


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait, bounded, until `condition()` holds (state owned by another task, no event to await)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def _publisher(broker: Broker, outbox: Outbox, **settings: object) -> Publisher:
    config = PublisherSettings(host=broker.host, port=broker.port, client_id=f"amsd-outage-{broker.port}")
    for name, value in settings.items():
        setattr(config, name, value)
    return Publisher(config, outbox, backoff_initial=0.05, backoff_max=0.3)


class SessionSubscriber(Subscriber):
    """Persistent session (clean_session=False) that reconnects after broker restarts: with a broker that
    persists sessions, it sees every QoS 1 message the broker accepted, also those sent while it was away."""

    def __init__(self, broker: Broker, topics: list[str], **auth: str) -> None:
        super().__init__()
        self.broker = broker
        self.topics = topics
        self.auth = auth
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=f"test-session-{self.broker.port}",
                    clean_session=False,
                    **self.auth,  # type: ignore[arg-type]
                ) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes):
                            payload = str(payload).encode()
                        await self._add(str(message.topic), payload, bool(message.retain))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)  # the broker is restarting: try again shortly


@contextlib.asynccontextmanager
async def session_subscriber(broker: Broker, topics: list[str], **auth: str) -> AsyncIterator[SessionSubscriber]:
    sub = SessionSubscriber(broker, topics, **auth)
    task = asyncio.create_task(sub.run())
    try:
        await asyncio.wait_for(sub.connected.wait(), 10)
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _numbered(start: int, count: int) -> list[OutMessage]:
    return [OutMessage("amsd/m1/state", json.dumps({"n": n}).encode()) for n in range(start, start + count)]


async def test_broker_dies_with_messages_in_flight_nothing_lost(tmp_path: Path) -> None:
    """aiomqtt loses a QoS 1 publish in flight when the broker goes away; the publisher must resend it.

    Stopped mid-burst, down for a while (more readings), back: every reading arrives, the first arrival
    of each in order (at least once: a reading whose PUBACK was lost may come twice)."""
    burst, down, after = 2000, 500, 200
    total = burst + down + after
    with Broker(tmp_path / "broker", persistence=True) as broker:
        async with session_subscriber(broker, ["amsd/m1/#"]) as sub:
            publisher = _publisher(broker, Outbox(tmp_path / "outbox.db"), discovery_prefix=None)
            publisher.start()
            await asyncio.wait_for(publisher.wait_connected(), 10)
            for message in _numbered(0, burst):
                publisher.submit(message)
            await wait_until(lambda: publisher.published > 0)
            broker.stop()  # while most of the burst is still queued or unacknowledged
            await wait_until(lambda: not publisher.connected)
            for message in _numbered(burst, down):
                publisher.submit(message)
            await wait_until(lambda: publisher.stats()["queue_depth"] == 0)  # on disk, not only in memory

            broker.start()
            await asyncio.wait_for(publisher.wait_connected(), 10)
            for message in _numbered(burst + down, after):
                publisher.submit(message)
            last = _numbered(total - 1, 1)[0].payload
            await sub.wait_for("amsd/m1/state", lambda p: p == last, timeout=30)  # cheap: runs per arrival
            await wait_until(lambda: publisher.stats()["outbox_depth"] == 0)
            stats = publisher.stats()
            await publisher.stop()

    numbers = [json.loads(p)["n"] for p in sub.on("amsd/m1/state")]
    assert set(numbers) == set(range(total))
    assert list(dict.fromkeys(numbers)) == list(range(total))
    assert stats["dropped"] == 0
    assert stats["reconnects"] >= 1


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_200_character_password_with_every_hazard(
    tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(WEIRD_PASSWORD) == 200
    caplog.set_level(logging.DEBUG)
    with Broker(tmp_path / "broker", users={"amsd": WEIRD_PASSWORD, "reader": "r"}) as broker:
        async with session_subscriber(broker, ["amsd/#"], username="reader", password="r") as sub:
            publisher = _publisher(
                broker, Outbox(tmp_path / "a.db"), username="amsd", password=WEIRD_PASSWORD, protocol=protocol
            )
            publisher.start()
            await asyncio.wait_for(publisher.wait_connected(), 10)
            publisher.submit(OutMessage("amsd/m1/state", b'{"n":1}'))
            await sub.wait_for("amsd/status", lambda p: p == b"online")
            await sub.wait_for("amsd/m1/state")
            await publisher.stop()

            # One character short: refused, retried with backoff, never connected, never shown.
            wrong = _publisher(
                broker, Outbox(tmp_path / "b.db"), username="amsd", password=WEIRD_PASSWORD[:-1], protocol=protocol
            )
            wrong.start()
            await wait_until(lambda: wrong.stats()["reconnects"] >= 2)
            assert not wrong.connected
            await wrong.stop()
    seen = caplog.text + repr(wrong.stats()) + repr(wrong.settings) + str(wrong.last_error)
    for fragment in (WEIRD_PASSWORD[:-1], WEIRD_PASSWORD[:16], WEIRD_PASSWORD[100:116]):
        assert fragment not in seen
