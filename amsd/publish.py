"""The MQTT publisher: one task owns the client, the connection, the LWT and the outbox.

Readers and pipelines never wait for MQTT: they call `Publisher.submit()`, which only appends to a
bounded in-memory queue. This task delivers the queue in order with QoS 1, several messages in flight
at a time. While the broker is unreachable, and whenever the queue overflows, persistent messages
(readings, raw frames) move to the SQLite outbox; after a reconnect the outbox is replayed in order,
each message deleted only once the broker acknowledged it, and then live traffic continues.
Live-only messages (the per-value topics) are not stored: their next value replaces them.

The connection is amsd's own small MQTT client (`amsd.mqtt`; why: docs/design-notes.md). This module
reconnects (backoff 1 s doubling to 30 s, with jitter), and publishes `offline` itself on a clean
stop, since a DISCONNECT makes the broker discard the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from amsd.log import get_logger
from amsd.mqtt import Connection, ConnectOptions, MqttError
from amsd.outbox import Outbox

if TYPE_CHECKING:
    import ssl

log = get_logger("amsd.publish")

BACKOFF_INITIAL_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
WINDOW: Final = 1000  # messages written and not yet acknowledged
QOS2_WINDOW: Final = 10
CONNECT_BATCH: Final = 10  # connect messages (discovery, availability) in flight at a time
CONNECT_TIMEOUT_S: Final = 10.0
PUBLISH_TIMEOUT_S: Final = 10.0
ONLINE: Final = b"online"
OFFLINE: Final = b"offline"


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: bytes
    retain: bool = False
    # Kept in the outbox while the broker is away (readings, raw frames); otherwise dropped then.
    persistent: bool = True


@dataclass(slots=True)
class PublisherSettings:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "amsd"
    topic_prefix: str = "amsd"
    qos: int = 1
    protocol: str = "3.1.1"
    keepalive: int = 30
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False
    discovery_prefix: str | None = "homeassistant"  # None: no Home Assistant discovery

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}/status"


@dataclass(slots=True)
class _InFlight:
    sent: float  # time.monotonic() when written
    outbox_id: int | None  # set when the message came from the outbox
    message: OutMessage | None  # set when it came from the queue
    acked: bool


class MessageSink(Protocol):
    """What pipelines and the daemon need of a publisher (the demo prints instead of publishing)."""

    def submit(self, message: OutMessage) -> None: ...

    def start(self) -> asyncio.Task[None]: ...

    async def stop(self, timeout: float = ...) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Publisher:
    """Deliver messages to the broker in order; never block the caller.

    `on_connect` returns messages to (re)send on every connection before anything else: retained
    availability and diagnostics, Home Assistant discovery. It is called again when Home Assistant
    announces `online` on `<discovery_prefix>/status`.
    """

    def __init__(
        self,
        settings: PublisherSettings,
        outbox: Outbox,
        *,
        queue_size: int = 20_000,
        on_connect: Callable[[], Iterable[OutMessage]] | None = None,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.queue_size = queue_size
        self._queue: deque[OutMessage] = deque()
        self._wake = asyncio.Event()
        self._on_connect = on_connect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.published = 0
        self.outboxed = 0
        self.dropped_live = 0
        self.reconnects = 0
        self.refused = 0  # MQTT 5 only: acknowledged with a failure reason (e.g. not authorized), not delivered
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------- interface
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def submit(self, message: OutMessage) -> None:
        """Queue a message; returns at once. Overflow spills the oldest to the outbox."""
        queue = self._queue
        queue.append(message)
        if len(queue) > self.queue_size:
            self._spill(len(queue) - self.queue_size // 2)
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {
            "mqtt_connected": self.connected,
            "published": self.published,
            "outboxed": self.outboxed,
            "outbox_depth": self.outbox.depth,
            # Readings lost at the outbox cap: the only loss the reliability contract allows.
            "dropped": self.outbox.dropped,
            # Live per-value messages not stored while the broker was away (the next value replaces them).
            "live_values_skipped": self.dropped_live,
            "queue_depth": len(self._queue),
            "reconnects": self.reconnects,
            "refused_by_broker": self.refused,
        }

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="amsd-publisher")
        return self._task

    async def stop(self, timeout: float = 6.0) -> None:
        """Deliver what is queued (or store it in the outbox), publish `offline`, disconnect."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._spill(len(self._queue))
        self.outbox.close()

    # ------------------------------------------------------------------------------- internals
    def _spill(self, count: int) -> None:
        """Move the `count` oldest queued messages to the outbox (live-only ones are dropped)."""
        queue = self._queue
        rows = []
        for _ in range(min(count, len(queue))):
            message = queue.popleft()
            if message.persistent:
                rows.append((message.topic, message.payload, self.settings.qos, message.retain))
            else:
                self.dropped_live += 1
        if rows:
            self.outbox.append_many(rows)
            self.outboxed += len(rows)

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not (s.tls or s.tls_ca_file or s.tls_cert_file):
            return None
        import ssl

        context = ssl.create_default_context(cafile=s.tls_ca_file)
        if s.tls_cert_file:
            context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
        if s.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect_options(self) -> ConnectOptions:
        s = self.settings
        return ConnectOptions(
            client_id=s.client_id,
            username=s.username,
            password=s.password,
            keepalive=s.keepalive,
            version=5 if s.protocol == "5" else 4,
            will_topic=s.status_topic,
            will_payload=OFFLINE,
            will_qos=1,
            will_retain=True,
        )

    async def _run(self) -> None:
        delay = self._backoff_initial
        while True:
            connection: Connection | None = None
            try:
                connection = await Connection.open(
                    self.settings.host,
                    self.settings.port,
                    self._connect_options(),
                    ssl_context=self._ssl_context(),
                    timeout=CONNECT_TIMEOUT_S,
                )
                self._connected.set()
                delay = self._backoff_initial
                log.info("mqtt connected", host=self.settings.host, port=self.settings.port)
                await self._session(connection)
                await connection.publish_confirmed(self.settings.status_topic, OFFLINE, retain=True, timeout=2.0)
                await connection.disconnect()
                self._connected.clear()
                return  # clean stop
            except Exception as exc:
                # MqttError is the expected case; anything else (a full disk under the outbox, a bug,
                # an unreadable certificate) must not end publishing for the daemon's lifetime either:
                # log it and reconnect.
                if connection is not None:
                    connection.abort()
                if not isinstance(exc, MqttError):
                    log.error("publisher failed, restarting it", error=repr(exc), exc_info=True)
                self._connected.clear()
                self.last_error = str(exc)
                self.reconnects += 1
                # Keep nothing persistent only in memory while the broker is away: a restart would lose it.
                self._spill(len(self._queue))
                if self._stopping:
                    return
                log.warning(
                    "mqtt unavailable, retrying",
                    host=self.settings.host,
                    port=self.settings.port,
                    error=str(exc),
                    retry_in_s=round(delay, 1),
                    outbox_depth=self.outbox.depth,
                    rate_key="mqtt",
                )
                self._wake.clear()
                # Sleep with jitter, but wake early to stop.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_stop(), delay * random.uniform(0.8, 1.2))
                if self._stopping:
                    self._spill(len(self._queue))
                    return
                delay = min(delay * 2, self._backoff_max)

    async def _wait_stop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()
            # While disconnected, new messages go straight to the outbox.
            self._spill(len(self._queue))

    async def _session(self, connection: Connection) -> None:
        await connection.publish_confirmed(self.settings.status_topic, ONLINE, retain=True, timeout=PUBLISH_TIMEOUT_S)
        if self.settings.discovery_prefix:
            await connection.subscribe(f"{self.settings.discovery_prefix}/status", qos=1, timeout=PUBLISH_TIMEOUT_S)
        connection.closed.add_done_callback(lambda _: self._wake.set())
        listener = asyncio.create_task(self._listen(connection), name="amsd-mqtt-listener")
        listener.add_done_callback(lambda _: self._wake.set())
        inflight: deque[_InFlight] = deque()
        try:
            await self._send_connect_messages(connection)
            await self._pump(connection, listener, inflight)
        finally:
            connection.on_acks = None
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await listener
            self._keep_unacknowledged(inflight)

    async def _pump(self, connection: Connection, listener: asyncio.Task[None], inflight: deque[_InFlight]) -> None:
        """Deliver the outbox, then the queue, keeping up to `window` messages in flight.

        Messages are written in order, a batch per write; the broker acknowledges QoS 1 messages in
        the order it received them (MQTT 3.1.1 section 4.6), and entries retire from the front only,
        so an out-of-order acknowledgement cannot delete an outbox row ahead of an older one.
        """
        by_packet_id: dict[int, _InFlight] = {}

        def on_acks(packet_ids: list[int]) -> None:
            pop = by_packet_id.pop
            for packet_id in packet_ids:
                entry = pop(packet_id, None)
                if entry is not None:
                    entry.acked = True
            self._wake.set()

        connection.on_acks = on_acks
        publish = connection.publish
        now = time.monotonic()

        def send(
            topic: str, payload: bytes, qos: int, retain: bool, outbox_id: int | None, message: OutMessage | None
        ) -> None:
            packet_id = publish(topic, payload, qos, retain)
            # QoS 0 needs no acknowledgement: written is done.
            entry = _InFlight(now, outbox_id, message, packet_id == 0)
            if packet_id:
                by_packet_id[packet_id] = entry
            inflight.append(entry)

        # MQTT 5 brokers announce how many QoS>0 messages they take in flight (Mosquitto: 20); keep a
        # margin for the connect messages that Home Assistant's `online` can trigger meanwhile.
        window = max(1, min(WINDOW, connection.receive_maximum - CONNECT_BATCH))
        if self.settings.qos == 2:
            # A QoS 2 message stays in the broker's incoming in-flight set until PUBREL; Mosquitto
            # disconnects an MQTT 3.1.1 client with more than 20 of them (its receive maximum).
            window = min(window, QOS2_WINDOW)
        outbox = self.outbox
        queue = self._queue
        outbox_cursor: int | None = None  # highest outbox id handed to the connection in this session
        outbox_inflight = 0
        refused_seen = 0
        while True:
            self._wake.clear()
            # Retire acknowledged messages from the front; the outbox deletes only those.
            acked_ids: list[int] = []
            while inflight and inflight[0].acked:
                done = inflight.popleft()
                if done.outbox_id is not None:
                    acked_ids.append(done.outbox_id)
                self.published += 1
            if acked_ids:
                outbox.remove(acked_ids)
                outbox_inflight -= len(acked_ids)
            if connection.refused != refused_seen:
                # MQTT 5 only (a 3.1.1 broker acknowledges what its ACL drops, and says nothing).
                log.warning(
                    "broker refused messages; check its ACL for the topic prefix",
                    count=connection.refused - refused_seen,
                    topic_prefix=self.settings.topic_prefix,
                    rate_key="mqtt-refused",
                )
                self.refused += connection.refused - refused_seen
                refused_seen = connection.refused
            if connection.closed.done():
                raise connection.closed.exception() or MqttError("connection lost")
            if listener.done():
                exc = listener.exception() if not listener.cancelled() else None
                raise exc if isinstance(exc, MqttError) else MqttError("connection lost")
            room = window - len(inflight)
            if room > 0 and outbox.depth > outbox_inflight and not self._stopping:
                # The outbox holds the oldest messages: it always goes first.
                now = time.monotonic()
                for stored in outbox.peek(room, after=outbox_cursor):
                    send(stored.topic, stored.payload, stored.qos, stored.retain, stored.id, None)
                    outbox_cursor = stored.id
                    outbox_inflight += 1
                connection.flush()
                continue
            if room > 0 and queue and outbox.depth == 0:
                qos = self.settings.qos
                now = time.monotonic()
                popleft = queue.popleft
                for _ in range(min(room, len(queue))):
                    message = popleft()
                    send(message.topic, message.payload, qos, message.retain, None, message)
                connection.flush()
                await asyncio.sleep(0)  # let readers run between large bursts
                continue
            if self._stopping:
                if queue and outbox.depth:
                    self._spill(len(queue))  # behind a backlog: store it rather than miss the deadline
                if not queue and not any(f.outbox_id is None for f in inflight):
                    return  # the rest of the outbox waits for the next start
            if inflight:
                # An unacknowledged front for too long: the broker is stuck; reconnect and resend.
                remaining = inflight[0].sent + PUBLISH_TIMEOUT_S - time.monotonic()
                if remaining <= 0:
                    raise MqttError("publish timed out")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            else:
                await self._wake.wait()

    def _keep_unacknowledged(self, inflight: deque[_InFlight]) -> None:
        """After a lost connection, messages the broker never acknowledged go back to the outbox, ahead
        of anything spilled meanwhile. Outbox rows were never deleted, so they need nothing."""
        rows: list[tuple[str, bytes, int, bool]] = []
        for entry in inflight:
            if entry.message is None or entry.acked:
                continue
            if entry.message.persistent:
                rows.append((entry.message.topic, entry.message.payload, self.settings.qos, entry.message.retain))
            else:
                self.dropped_live += 1
        self.published += sum(1 for entry in inflight if entry.message is not None and entry.acked)
        inflight.clear()
        if rows:
            self.outbox.prepend_many(rows)
            self.outboxed += len(rows)

    async def _send_connect_messages(self, connection: Connection) -> None:
        if self._on_connect is None:
            return
        messages = list(self._on_connect())
        # A few at a time: an MQTT 5 broker's receive maximum also counts these.
        for start in range(0, len(messages), CONNECT_BATCH):
            await asyncio.gather(
                *(
                    connection.publish_confirmed(m.topic, m.payload, retain=m.retain, timeout=PUBLISH_TIMEOUT_S)
                    for m in messages[start : start + CONNECT_BATCH]
                )
            )
            self.published += len(messages[start : start + CONNECT_BATCH])

    async def _listen(self, connection: Connection) -> None:
        while True:
            _topic, payload = await connection.messages.get()
            if payload == ONLINE:
                # Home Assistant restarted: re-send discovery after a random delay, as it asks.
                await asyncio.sleep(random.uniform(0.0, 5.0))
                await self._send_connect_messages(connection)
