"""A small MQTT client for what amsd does: publish fast, in order, QoS 0/1, over TCP or TLS.

Why not paho (through aiomqtt): profiling the pipeline showed paho spending about 70 % of the
daemon's CPU. For every acknowledged message it builds a ReasonCode, a Properties object and a
threading.Condition, logs twice and calls send() once per packet, which capped one process at about
8,600 QoS-1 messages/s. amsd needs a narrow subset of MQTT: CONNECT with a will, PUBLISH, PUBACK,
one SUBSCRIBE (Home Assistant's status topic), PINGREQ and DISCONNECT, on MQTT 3.1.1 or 5. That
subset is written here: the packet codec is plain functions over bytes (sans-IO), and `Connection`
is an asyncio.Protocol that writes a whole batch of packets with one write() and parses the
acknowledgements of one read in one pass. Delivery policy (ordering, the outbox, retries) stays in
`amsd.publish`.

Spec references: MQTT 3.1.1 (OASIS 2014) sections 2-3, MQTT 5.0 (OASIS 2019) sections 2-3.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ssl

__all__ = [
    "ConnectOptions",
    "Connection",
    "MqttError",
    "PacketReader",
    "encode_connect",
    "encode_subscribe",
]

# Fixed-header packet types (high nibble).
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_PACKET: Final = b"\xe0\x00"
MAX_REMAINING_LENGTH: Final = 268_435_455  # four varint bytes

# CONNACK return codes (3.1.1) and the common MQTT 5 reason codes, for error messages.
_CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}
# MQTT 5 property identifiers -> value width: 1, 2, 4 bytes, "v" varint, "s" string/binary, "p" pair.
_PROPERTY_WIDTH: Final[dict[int, int | str]] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s", 0x13: 2,
    0x15: "s", 0x16: "s", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip
PROPERTY_RECEIVE_MAXIMUM: Final = 0x21


class MqttError(Exception):
    """The connection failed, was refused or was lost. Messages never contain credentials."""


# ----------------------------------------------------------------------------------- codec (sans-IO)
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


# Remaining lengths below 128 are by far the most common (PUBACKs, short values): one table lookup.
_SHORT_LENGTHS: Final = tuple(bytes((n,)) for n in range(128))


def _remaining(length: int) -> bytes:
    if length < 128:
        return _SHORT_LENGTHS[length]
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"MQTT packet too large ({length} bytes)")
    return _varint(length)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    version: int = 4  # protocol level: 4 = MQTT 3.1.1, 5 = MQTT 5
    will_topic: str | None = None
    will_payload: bytes = b""
    will_qos: int = 1
    will_retain: bool = True
    clean_start: bool = True

    def __repr__(self) -> str:
        # Never show the password, even in a debugger or a traceback with locals.
        return f"ConnectOptions(client_id={self.client_id!r}, version={self.version}, keepalive={self.keepalive})"


def encode_connect(options: ConnectOptions) -> bytes:
    v5 = options.version == 5
    flags = 0x02 if options.clean_start else 0
    payload = [_string(options.client_id)]
    if options.will_topic is not None:
        flags |= 0x04 | (options.will_qos << 3) | (0x20 if options.will_retain else 0)
        if v5:
            payload.append(b"\x00")  # will properties: none
        payload += [_string(options.will_topic), _string(options.will_payload)]
    username = options.username
    if username is None and options.password is not None and not v5:
        username = ""  # MQTT 3.1.1 allows a password only after a user name (section 3.1.2.9)
    if username is not None:
        flags |= 0x80
        payload.append(_string(username))
    if options.password is not None:
        flags |= 0x40
        payload.append(_string(options.password))
    header = _string("MQTT") + bytes((options.version, flags)) + options.keepalive.to_bytes(2, "big")
    if v5:
        header += b"\x00"  # connect properties: none
    body = header + b"".join(payload)
    return bytes((CONNECT << 4,)) + _remaining(len(body)) + body


def encode_subscribe(packet_id: int, topic: str, qos: int, version: int = 4) -> bytes:
    properties = b"\x00" if version == 5 else b""
    body = packet_id.to_bytes(2, "big") + properties + _string(topic) + bytes((qos,))
    return bytes(((SUBSCRIBE << 4) | 0x02,)) + _remaining(len(body)) + body


def encode_puback(packet_id: int) -> bytes:
    # MQTT 5 allows the reason code and properties to be left out when the reason is success.
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def parse_properties(body: bytes, offset: int) -> tuple[dict[int, int], int]:
    """Read an MQTT 5 property block; returns the integer properties and the offset after the block.

    String, binary and pair properties are skipped (amsd needs none of them)."""
    length, offset = _read_varint(body, offset)
    end = offset + length
    if end > len(body):
        raise MqttError("malformed MQTT 5 properties")
    values: dict[int, int] = {}
    while offset < end:
        identifier = body[offset]
        offset += 1
        width = _PROPERTY_WIDTH.get(identifier)
        if width is None:
            raise MqttError(f"unknown MQTT 5 property 0x{identifier:02x}")
        if width == "v":
            values[identifier], offset = _read_varint(body, offset)
        elif width == "s":
            offset += 2 + int.from_bytes(body[offset : offset + 2], "big")
        elif width == "p":
            offset += 2 + int.from_bytes(body[offset : offset + 2], "big")
            offset += 2 + int.from_bytes(body[offset : offset + 2], "big")
        else:
            assert isinstance(width, int)
            values[identifier] = int.from_bytes(body[offset : offset + width], "big")
            offset += width
    if offset != end:
        raise MqttError("malformed MQTT 5 properties")
    return values, end


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for shift in (0, 7, 14, 21):
        if offset >= len(data):
            raise MqttError("malformed MQTT length")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise MqttError("malformed MQTT length")


class PacketReader:
    """Split a byte stream from the broker into (first byte, body) packets."""

    __slots__ = ("_buffer", "max_packet")
    # A malformed packet raises from `feed` once the packets before it have been returned: feed
    # `b""` after handling them to surface it.

    def __init__(self, max_packet: int = 1 << 20) -> None:
        self._buffer = b""
        self.max_packet = max_packet

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        packets: list[tuple[int, bytes]] = []
        append = packets.append
        offset = 0
        size = len(buffer)
        while size - offset >= 2:
            length = buffer[offset + 1]
            if length < 128:
                start = offset + 2
            else:
                try:
                    length, start = _read_varint(buffer, offset + 1)
                except MqttError:
                    if size - offset < 5 or packets:
                        break  # the length is incomplete, or: hand out the good packets before it first
                    raise
                if length > self.max_packet:
                    if packets:
                        break
                    raise MqttError(f"MQTT packet of {length} bytes from the broker is too large")
            end = start + length
            if end > size:
                break
            append((buffer[offset], buffer[start:end]))
            offset = end
        self._buffer = buffer[offset:]
        return packets

    @property
    def pending(self) -> int:
        return len(self._buffer)


# ------------------------------------------------------------------------------------ connection
class Connection(asyncio.Protocol):
    """One MQTT session over one transport. Create it with `await Connection.open(...)`.

    Publishing is synchronous and buffered: `publish()` encodes into a pending list and `flush()`
    writes the list with one `transport.write`. Acknowledgements reach `on_acks` as a list of packet
    ids per read. Incoming PUBLISH packets (the Home Assistant status) are put on `messages`.
    `closed` completes when the connection ends; its exception says why.
    """

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.version = options.version
        self._reader = PacketReader()
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._next_id = 0
        self._connack: asyncio.Future[int] | None = None
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._topics: dict[str, bytes] = {}
        self._publish_properties = b"\x00" if options.version == 5 else b""
        self._ping_task: asyncio.Task[None] | None = None
        self._ping_sent: float | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_acks: Callable[[list[int]], None] | None = None
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=100)
        self.receive_maximum = 65535
        self.refused = 0  # MQTT 5 PUBACKs with a failure reason code

    # ------------------------------------------------------------------------- opening, closing
    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        options: ConnectOptions,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        connection = cls(options)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: connection, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
                )
                connection._connack = loop.create_future()
                connection._write(encode_connect(options))
                code = await connection._connack
        except TimeoutError:
            connection.abort()
            raise MqttError(f"no CONNACK from {host}:{port} within {timeout:g} s") from None
        except OSError as exc:
            connection.abort()
            raise MqttError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        except BaseException:
            connection.abort()
            raise
        if code != 0:
            connection.abort()
            reason = _CONNACK_REASONS.get(code, f"code {code}")
            raise MqttError(f"broker refused the connection: {reason}")
        if options.keepalive > 0:
            connection._ping_task = loop.create_task(connection._keep_alive(), name="amsd-mqtt-ping")
        return connection

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._end(MqttError("connection closed"))

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the will) and close."""
        if self._transport is not None and not self._transport.is_closing():
            self.flush()
            self._transport.write(DISCONNECT_PACKET)
            self._transport.close()
        self._end(MqttError("disconnected"))

    def _end(self, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # retrieved: nobody need await it
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(str(exc)))
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(MqttError(str(exc)))
        self._waiters.clear()
        if self._ping_task is not None and self._ping_task is not asyncio.current_task():
            self._ping_task.cancel()

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.keepalive / 2
        while not self.closed.done():
            await asyncio.sleep(interval)
            if self._ping_sent is not None and loop.time() - self._ping_sent > self.options.keepalive:
                if self._transport is not None:
                    self._transport.abort()
                self._end(MqttError("no PINGRESP from the broker within the keepalive"))
                return
            if self._ping_sent is None:
                self._ping_sent = loop.time()
                self._write(PINGREQ_PACKET)

    # ------------------------------------------------------------------------------ publishing
    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1  # 1..65535; 0 is not a valid packet id
        return self._next_id

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Queue a PUBLISH for the next `flush()`; returns its packet id (0 for QoS 0)."""
        encoded_topic = self._topics.get(topic)
        if encoded_topic is None:
            if len(self._topics) > 4096:
                self._topics.clear()
            encoded_topic = self._topics[topic] = _string(topic)
        properties = self._publish_properties
        if qos:
            packet_id = self._packet_id()
            length = len(encoded_topic) + 2 + len(properties) + len(payload)
            self._pending += (
                _FIRST_BYTE[qos][retain],
                _remaining(length),
                encoded_topic,
                packet_id.to_bytes(2, "big"),
                properties,
                payload,
            )
            return packet_id
        length = len(encoded_topic) + len(properties) + len(payload)
        self._pending += (_FIRST_BYTE[0][retain], _remaining(length), encoded_topic, properties, payload)
        return 0

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise MqttError("connection lost")
        transport.write(data)

    async def publish_confirmed(self, topic: str, payload: bytes, retain: bool, timeout: float) -> None:
        """Publish with QoS 1 and wait for the PUBACK."""
        packet_id = self.publish(topic, payload, 1, retain)
        waiter = self._waiters[packet_id] = asyncio.get_running_loop().create_future()
        self.flush()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise MqttError(f"no PUBACK within {timeout:g} s") from None
        finally:
            self._waiters.pop(packet_id, None)

    async def subscribe(self, topic: str, qos: int, timeout: float) -> None:
        packet_id = self._packet_id()
        waiter = self._waiters[packet_id] = asyncio.get_running_loop().create_future()
        self.flush()
        self._write(encode_subscribe(packet_id, topic, qos, self.version))
        try:
            async with asyncio.timeout(timeout):
                granted = await waiter
        except TimeoutError:
            raise MqttError(f"no SUBACK within {timeout:g} s") from None
        finally:
            self._waiters.pop(packet_id, None)
        if granted >= 0x80:
            raise MqttError(f"broker refused the subscription to {topic} (code 0x{granted:02x})")

    # ------------------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._end(MqttError(f"connection lost: {exc}" if exc else "connection closed by the broker"))

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._reader.feed(data)
            self._handle(packets)
            if packets and self._reader.pending:
                self._handle(self._reader.feed(b""))  # raises if a malformed packet follows them
        except MqttError as exc:
            if self._transport is not None:
                self._transport.abort()
            self._end(exc)
        except Exception as exc:  # a malformed packet must end this session, not the event loop
            if self._transport is not None:
                self._transport.abort()
            self._end(MqttError(f"malformed packet from the broker ({type(exc).__name__})"))

    def _handle(self, packets: list[tuple[int, bytes]]) -> None:
        acked: list[int] = []
        waiters = self._waiters
        for first, body in packets:
            kind = first >> 4
            if kind in (PUBACK, PUBCOMP, PUBREC):
                packet_id = _unpack_id(body, 0)[0]
                if len(body) > 2 and body[2] >= 0x80:
                    self.refused += 1  # MQTT 5: the broker took it but will not deliver it
                elif kind == PUBREC:
                    self._write(bytes(((PUBREL << 4) | 0x02, 2)) + body[:2])  # QoS 2, second step
                    continue
                waiter = waiters.get(packet_id)
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(0)
                else:
                    acked.append(packet_id)
            elif kind == PUBLISH:
                self._incoming(first, body)
            elif kind == PINGRESP:
                self._ping_sent = None
            elif kind == SUBACK:
                packet_id = _unpack_id(body, 0)[0]
                offset = 2
                if self.version == 5:
                    offset = parse_properties(body, offset)[1]
                waiter = waiters.get(packet_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(body[offset] if offset < len(body) else 0x80)
            elif kind == CONNACK:
                self._on_connack(body)
            elif kind == DISCONNECT:
                reason = body[0] if body else 0
                raise MqttError(f"broker disconnected us ({_CONNACK_REASONS.get(reason, f'code {reason}')})")
            else:
                raise MqttError(f"unexpected MQTT packet type {kind} from the broker")
        if acked and self.on_acks is not None:
            self.on_acks(acked)

    def _on_connack(self, body: bytes) -> None:
        if len(body) < 2:
            raise MqttError("malformed CONNACK")
        if self.version == 5 and body[1] == 0:
            properties = parse_properties(body, 2)[0]
            self.receive_maximum = properties.get(PROPERTY_RECEIVE_MAXIMUM, 65535)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(body[1])

    def _incoming(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        topic_length = _unpack_id(body, 0)[0]
        offset = 2 + topic_length
        topic = body[2:offset].decode("utf-8", "replace")
        if qos:
            packet_id = _unpack_id(body, offset)[0]
            offset += 2
            self._write(encode_puback(packet_id))
        if self.version == 5:
            offset = parse_properties(body, offset)[1]
        if not self.messages.full():  # only Home Assistant's status arrives here; excess is stale
            self.messages.put_nowait((topic, body[offset:]))


_unpack_id: Final = struct.Struct(">H").unpack_from
# The first byte of a PUBLISH, by [qos][retain].
_FIRST_BYTE: Final = tuple(
    tuple(bytes(((PUBLISH << 4) | (qos << 1) | retain,)) for retain in (0, 1)) for qos in (0, 1, 2)
)
