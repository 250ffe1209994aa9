"""The publisher against a real Mosquitto: status and LWT, order, outbox across a broker restart,
queue overflow, clean stop, MQTT 5, Home Assistant restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from amsd.outbox import Outbox
from amsd.publish import OutMessage, Publisher, PublisherSettings
from tests.conftest import Subscriber
from tests.mosquitto import MOSQUITTO, SKIP_REASON, Broker, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

WAIT = 15.0  # generous: only a failing test waits this long
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Overrides conftest's broker (and so the `subscriber`'s): mosquitto's default per-client queue
    of 1,000 messages would drop part of a fast burst to the test's subscriber, not amsd's fault."""
    with Broker(tmp_path / "broker", persistence=True) as running_broker:
        yield running_broker


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `condition()` holds (state owned by another task, with no event to wait on)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def _settings(broker: Broker | int, **overrides: object) -> PublisherSettings:
    port = broker if isinstance(broker, int) else broker.port
    settings = PublisherSettings(
        host="127.0.0.1", port=port, client_id=f"amsd-test-{os.getpid()}", discovery_prefix=None
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


@contextlib.asynccontextmanager
async def running(
    settings: PublisherSettings,
    outbox: Outbox,
    *,
    on_connect: Callable[[], Iterable[OutMessage]] | None = None,
    queue_size: int = 20_000,
) -> AsyncIterator[Publisher]:
    publisher = Publisher(
        settings, outbox, on_connect=on_connect, queue_size=queue_size, backoff_initial=0.05, backoff_max=0.2
    )
    publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop(timeout=5.0)


def _numbered(count: int, topic: str = "amsd/m/state") -> list[OutMessage]:
    return [OutMessage(topic, str(i).encode()) for i in range(count)]


async def _retained(broker: Broker, topic: str) -> tuple[bytes, bool]:
    """What a client connecting now gets on `topic` (the retained message)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"probe-{time.monotonic_ns()}") as client:
        await client.subscribe(topic, qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), WAIT)
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        return payload, bool(message.retain)


# ------------------------------------------------------------------------------------- status and order


async def test_online_retained_in_order_delivery_and_offline_on_stop(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    async with running(_settings(broker), outbox) as publisher:
        await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
        assert await _retained(broker, "amsd/status") == (b"online", True)

        for message in _numbered(1000):
            publisher.submit(message)
        received = await subscriber.wait_for("amsd/m/state", count=1000, timeout=WAIT)
        assert received == [str(i).encode() for i in range(1000)]
        await eventually(lambda: publisher.stats()["published"] >= 1000)
        stats = publisher.stats()
        assert stats["mqtt_connected"] is True
        assert stats["outbox_depth"] == 0 and stats["dropped"] == 0 and stats["queue_depth"] == 0
    assert subscriber.on("amsd/status")[-1] == b"offline"
    assert await _retained(broker, "amsd/status") == (b"offline", True)


async def test_stop_delivers_what_is_queued_before_offline(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = Publisher(_settings(broker), outbox)
    publisher.start()
    await publisher.wait_connected()
    for message in _numbered(500):
        publisher.submit(message)
    await publisher.stop(timeout=8.0)  # SIGTERM path: flush, then `offline`

    await subscriber.wait_for("amsd/status", lambda p: p == b"offline", timeout=WAIT)
    assert subscriber.on("amsd/m/state") == [str(i).encode() for i in range(500)]
    topics = [t for t, _, _ in subscriber.messages if t in ("amsd/m/state", "amsd/status")]
    assert topics[-1] == "amsd/status"  # offline comes after the last reading
    assert Outbox(tmp_path / "outbox.db").depth == 0


async def test_will_says_offline_when_the_process_dies(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    """kill -9 cannot run any code: the `offline` a subscriber then sees can only be the broker's Will."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from amsd.outbox import Outbox
        from amsd.publish import Publisher, PublisherSettings

        async def main() -> None:
            settings = PublisherSettings(host="127.0.0.1", port={broker.port}, client_id="amsd-doomed",
                                         discovery_prefix=None)
            Publisher(settings, Outbox({str(tmp_path / "doomed.db")!r})).start()
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO)
    try:
        await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
        assert b"offline" not in subscriber.on("amsd/status")
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), WAIT)
        await subscriber.wait_for("amsd/status", lambda p: p == b"offline", timeout=WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert await _retained(broker, "amsd/status") == (b"offline", True)


async def test_mqtt5_connects_and_delivers(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    async with running(_settings(broker, protocol="5"), Outbox(tmp_path / "outbox.db")) as publisher:
        await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
        for message in _numbered(20):
            publisher.submit(message)
        assert await subscriber.wait_for("amsd/m/state", count=20, timeout=WAIT) == [str(i).encode() for i in range(20)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_qos2_delivers_in_order(broker: Broker, subscriber: Subscriber, tmp_path: Path, protocol: str) -> None:
    async with running(_settings(broker, protocol=protocol, qos=2), Outbox(tmp_path / "outbox.db")) as publisher:
        await subscriber.wait_for("amsd/status", lambda p: p == b"online", timeout=WAIT)
        for message in _numbered(300):
            publisher.submit(message)
        assert await subscriber.wait_for("amsd/m/state", count=300, timeout=WAIT) == [
            str(i).encode() for i in range(300)
        ]
        await eventually(lambda: publisher.published >= 300)
        assert publisher.outbox.depth == 0


async def test_mqtt5_refusal_by_the_broker_acl_is_counted_not_silent(tmp_path: Path) -> None:
    """Under MQTT 5 a broker says when its ACL refuses a message: amsd counts and logs it."""
    acl = "topic readwrite amsd/status\ntopic readwrite amsd/m/#\n"  # amsd/other/... is denied
    with Broker(tmp_path / "acl-broker", acl=acl) as acl_broker:
        async with aiomqtt.Client(acl_broker.host, acl_broker.port, identifier="acl-sub") as client:
            await client.subscribe("amsd/m/state", qos=1)
            async with running(_settings(acl_broker, protocol="5"), Outbox(tmp_path / "outbox.db")) as publisher:
                await publisher.wait_connected()
                publisher.submit(OutMessage("amsd/other/state", b"denied"))
                publisher.submit(OutMessage("amsd/m/state", b"allowed"))
                # Mosquitto 2.0 also drops the connection after refusing; the allowed message, in
                # flight then, is delivered after the reconnect.
                message = await asyncio.wait_for(anext(aiter(client.messages)), WAIT)
                assert message.payload == b"allowed"
                await eventually(lambda: publisher.outbox.depth == 0 and publisher.stats()["queue_depth"] == 0)
                assert publisher.stats()["refused_by_broker"] == 1  # refused is final: not retried


async def test_custom_prefix_and_retain_flags(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    async with running(_settings(broker, topic_prefix="home/amsd"), Outbox(tmp_path / "outbox.db")) as publisher:
        await subscriber.wait_for("home/amsd/status", lambda p: p == b"online", timeout=WAIT)
        publisher.submit(OutMessage("home/amsd/m/availability", b"online", retain=True))
        await subscriber.wait_for("home/amsd/m/availability", timeout=WAIT)
        assert await _retained(broker, "home/amsd/m/availability") == (b"online", True)


# ------------------------------------------------------------------------------------- outbox and outages


async def test_broker_restart_outbox_replays_everything_in_order(tmp_path: Path) -> None:
    """Broker stopped -> N readings land in the outbox -> broker back on the same port -> all N arrive
    in order, and the outbox is empty. A persistent session (clean_session=False on a broker with
    persistence) lets the subscriber miss nothing without racing the publisher's reconnect."""
    count = 300
    broker = Broker(tmp_path / "broker", persistence=True).start()
    restarted = Broker(tmp_path / "broker", port=broker.port, persistence=True)
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        async with aiomqtt.Client(broker.host, broker.port, identifier="replay-sub", clean_session=False) as client:
            await client.subscribe("amsd/m/#", qos=1)

        async with running(_settings(broker), outbox) as publisher:
            await publisher.wait_connected()
            publisher.submit(OutMessage("amsd/m/state", b"before"))
            await eventually(lambda: publisher.published >= 1)

            broker.stop()
            await eventually(lambda: not publisher.connected)
            for message in _numbered(count):
                publisher.submit(message)
            publisher.submit(OutMessage("amsd/m/power_import", b"1", persistent=False))  # live only: dropped
            await eventually(lambda: outbox.depth == count)
            assert publisher.stats()["outbox_depth"] == count
            assert [m.payload for m in outbox.peek(3)] == [b"0", b"1", b"2"]

            restarted.start()
            await eventually(lambda: publisher.connected and outbox.depth == 0)
            publisher.submit(OutMessage("amsd/m/state", b"after"))  # live traffic continues after the backlog
            await eventually(lambda: publisher.stats()["queue_depth"] == 0 and publisher.published >= count + 2)
            stats = publisher.stats()
            assert stats["reconnects"] >= 1 and stats["dropped"] == 0
            assert stats["live_values_skipped"] == 1  # the live-only value, counted

            received: list[bytes] = []
            async with aiomqtt.Client(broker.host, broker.port, identifier="replay-sub", clean_session=False) as client:
                await client.subscribe("amsd/m/#", qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        if message.topic.matches("amsd/m/state"):
                            received.append(message.payload)
                        if message.payload == b"after":
                            return

                await asyncio.wait_for(collect(), WAIT)
        # The session kept everything while the subscriber was away: the message before the outage, the
        # backlog from the outbox, then live traffic.
        assert received == [b"before", *(str(i).encode() for i in range(count)), b"after"]
    finally:
        restarted.stop()
        broker.stop()


async def test_broker_unreachable_from_the_start_keeps_readings_on_disk(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    path = tmp_path / "outbox.db"
    publisher = Publisher(_settings(port), Outbox(path), backoff_initial=0.05, backoff_max=0.2)
    publisher.start()
    for message in _numbered(50):
        publisher.submit(message)
    publisher.submit(OutMessage("amsd/m/voltage_l1", b"230", persistent=False))
    await eventually(lambda: publisher.outbox.depth == 50)
    assert not publisher.connected
    started = time.monotonic()
    await publisher.stop(timeout=5.0)
    assert time.monotonic() - started < 5.0  # no broker must not delay a SIGTERM

    reopened = Outbox(path)  # the next run finds the backlog
    assert [m.payload for m in reopened.peek(100)] == [str(i).encode() for i in range(50)]
    reopened.close()

    # ...and delivers it once a broker is there.
    with Broker(tmp_path / "later", port=port) as broker:
        outbox = Outbox(path)
        collected: list[bytes] = []
        async with aiomqtt.Client(broker.host, broker.port, identifier="late-sub") as client:
            await client.subscribe("amsd/m/state", qos=1)
            async with running(_settings(broker), outbox):

                async def collect() -> None:
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        collected.append(message.payload)
                        if len(collected) == 50:
                            return

                await asyncio.wait_for(collect(), WAIT)
                await eventually(lambda: outbox.depth == 0)
        assert collected == [str(i).encode() for i in range(50)]


async def test_queue_overflow_spills_to_the_outbox_without_blocking(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    async with running(_settings(broker), outbox, queue_size=50) as publisher:
        await publisher.wait_connected()
        started = time.perf_counter()
        for i in range(2000):  # a burst with no chance for the publisher task to run in between
            publisher.submit(OutMessage("amsd/m/state", str(i).encode()))
            if i % 10 == 0:
                publisher.submit(OutMessage("amsd/m/power_import", str(i).encode(), persistent=False))
        elapsed = time.perf_counter() - started
        assert publisher.stats()["queue_depth"] <= 50
        assert outbox.depth > 0 and publisher.outboxed == outbox.depth
        assert elapsed < 2.0  # submit() never waits for the network (not a benchmark: a hang guard)

        received = await subscriber.wait_for("amsd/m/state", count=2000, timeout=WAIT)
        assert received == [str(i).encode() for i in range(2000)]  # outbox first, then the queue: in order
        await eventually(lambda: outbox.depth == 0)
        assert publisher.dropped_live > 0  # spilled live-only values are dropped, and counted
        assert publisher.stats()["live_values_skipped"] == publisher.dropped_live
        assert publisher.stats()["dropped"] == 0


# ------------------------------------------------------------------------------------- connect messages


async def test_connect_messages_and_home_assistant_restart(
    broker: Broker, subscriber: Subscriber, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # no random delay in a test
    calls = 0

    def on_connect() -> list[OutMessage]:
        nonlocal calls
        calls += 1
        return [OutMessage("homeassistant/device/amsd_x/config", f'{{"n":{calls}}}'.encode(), retain=True)]

    settings = _settings(broker, discovery_prefix="homeassistant")
    async with running(settings, Outbox(tmp_path / "outbox.db"), on_connect=on_connect):
        await subscriber.wait_for("homeassistant/device/amsd_x/config", timeout=WAIT)
        async with aiomqtt.Client(broker.host, broker.port, identifier="home-assistant") as ha:
            await ha.publish("homeassistant/status", b"online", qos=1)
        again = await subscriber.wait_for("homeassistant/device/amsd_x/config", count=2, timeout=WAIT)
        assert again == [b'{"n":1}', b'{"n":2}']
        assert await _retained(broker, "homeassistant/device/amsd_x/config") == (b'{"n":2}', True)


async def test_broker_dies_mid_burst_nothing_is_lost(tmp_path: Path) -> None:
    """Messages in flight when the broker goes away are not lost: unacknowledged ones are sent again
    after the reconnect (QoS 1 is at-least-once, so a repeat is allowed, a gap is not)."""
    count = 3000
    broker = Broker(tmp_path / "broker", persistence=True).start()
    restarted = Broker(tmp_path / "broker", port=broker.port, persistence=True)
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        async with aiomqtt.Client(broker.host, broker.port, identifier="burst-sub", clean_session=False) as client:
            await client.subscribe("amsd/m/#", qos=1)
        async with running(_settings(broker), outbox) as publisher:
            await publisher.wait_connected()
            for message in _numbered(count):
                publisher.submit(message)
            await asyncio.sleep(0)  # let the publisher hand a first window to the socket
            await asyncio.to_thread(broker.stop)
            await eventually(lambda: not publisher.connected)
            restarted.start()
            await eventually(lambda: publisher.connected and outbox.depth == 0 and not publisher.stats()["queue_depth"])
            publisher.submit(OutMessage("amsd/m/state", b"end"))

            received: list[bytes] = []
            async with aiomqtt.Client(broker.host, broker.port, identifier="burst-sub", clean_session=False) as client:
                await client.subscribe("amsd/m/#", qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        if message.payload == b"end":
                            return
                        received.append(message.payload)

                await asyncio.wait_for(collect(), WAIT)
        numbers = [int(p) for p in received]
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == list(range(count))  # every message, first copies in order
    finally:
        restarted.stop()
        broker.stop()
