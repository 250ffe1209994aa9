"""amsd's MQTT client: the packet codec, and `Connection` against a scripted broker on a real socket.

The real-Mosquitto paths (order, outbox, TLS, MQTT 5, QoS 2, LWT) are in tests/e2e/test_publish*.py;
here are the cases Mosquitto will not produce on demand: refusals, silence, out-of-order and
coalesced acknowledgements, malformed packets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsd.mqtt import (
    Connection,
    ConnectOptions,
    MqttError,
    PacketReader,
    encode_connect,
    encode_subscribe,
    parse_properties,
)

PASSWORD = "s3cret-Pa55word"
WAIT = 5.0


def _packet(first: int, body: bytes) -> bytes:
    length = len(body)
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            break
    return bytes((first,)) + bytes(encoded) + body


def _string(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


# ------------------------------------------------------------------------------------------- codec
def test_connect_311_carries_will_credentials_and_flags() -> None:
    options = ConnectOptions(
        "amsd-1", username="u", password=PASSWORD, keepalive=30, will_topic="amsd/status", will_payload=b"offline"
    )
    [(first, body)] = PacketReader().feed(encode_connect(options))
    assert first == 0x10
    assert body[:6] == _string("MQTT") and body[6] == 4
    # user name, password, will retain, will QoS 1, will, clean session
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert int.from_bytes(body[8:10], "big") == 30
    assert body[10:] == _string("amsd-1") + _string("amsd/status") + _string("offline") + _string("u") + _string(
        PASSWORD
    )


def test_connect_5_has_empty_property_blocks() -> None:
    options = ConnectOptions("c", version=5, will_topic="t", will_payload=b"x")
    [(_, body)] = PacketReader().feed(encode_connect(options))
    assert body[6] == 5
    assert body[10] == 0  # connect properties
    assert body[11:] == _string("c") + b"\x00" + _string("t") + _string("x")  # will properties before the will


@pytest.mark.parametrize("version", [4, 5])
def test_password_without_user_name(version: int) -> None:
    [(_, body)] = PacketReader().feed(encode_connect(ConnectOptions("c", password="pw", version=version)))
    flags = body[7]
    if version == 4:  # 3.1.1: a password only after a user name, so an empty one is sent
        assert flags & 0xC0 == 0xC0 and body.endswith(_string("") + _string("pw"))
    else:  # MQTT 5 allows a password alone
        assert flags & 0xC0 == 0x40 and body.endswith(_string("c") + _string("pw"))


def test_connect_options_repr_hides_the_password() -> None:
    assert PASSWORD not in repr(ConnectOptions("c", username="u", password=PASSWORD))


def test_subscribe_packet() -> None:
    assert encode_subscribe(7, "homeassistant/status", 1) == _packet(
        0x82, b"\x00\x07" + _string("homeassistant/status") + b"\x01"
    )
    assert encode_subscribe(7, "t", 1, version=5) == _packet(0x82, b"\x00\x07\x00" + _string("t") + b"\x01")


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=20_000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=8),
)
def test_reader_reassembles_packets_however_the_stream_is_cut(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(_packet(0x30 + index % 2, body) for index, body in enumerate(bodies))
    reader = PacketReader()
    packets: list[tuple[int, bytes]] = []
    previous = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        packets += reader.feed(stream[previous:cut])
        previous = cut
    assert packets == [(0x30 + index % 2, body) for index, body in enumerate(bodies)]


def test_reader_rejects_a_malformed_or_oversized_length() -> None:
    with pytest.raises(MqttError):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")  # a fifth length byte
    with pytest.raises(MqttError, match="too large"):
        PacketReader(max_packet=1000).feed(_packet(0x30, bytes(1001))[:10])
    assert PacketReader().feed(b"\x30\xff\xff") == []  # an incomplete length waits for more


def test_reader_hands_out_good_packets_before_a_malformed_one() -> None:
    reader = PacketReader()
    assert reader.feed(b"\x40\x02\x00\x01" + b"\x30\xff\xff\xff\xff\x01") == [(0x40, b"\x00\x01")]
    with pytest.raises(MqttError):
        reader.feed(b"")


def test_properties_give_integers_and_skip_strings() -> None:
    block = (
        b"\x1f" + _string("reason") + b"\x21\x00\x07" + b"\x26" + _string("k") + _string("v") + b"\x27\x00\x01\x00\x00"
    )
    values, end = parse_properties(bytes((len(block),)) + block + b"tail", 0)
    assert values == {0x21: 7, 0x27: 65536}
    assert end == len(block) + 1
    with pytest.raises(MqttError, match="unknown"):
        parse_properties(b"\x02\x7f\x00", 0)
    with pytest.raises(MqttError):
        parse_properties(b"\x09\x21\x00", 0)  # declared longer than the packet


# ------------------------------------------------------------------------------ scripted broker
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift in (0, 7, 14, 21):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def scripted_broker(script: Script) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connack: bytes = b"\x00\x00") -> None:
    first, _ = await _read_packet(reader)
    assert first == 0x10
    writer.write(_packet(0x20, connack))
    await writer.drain()


async def _open(port: int, **options: object) -> Connection:
    return await Connection.open("127.0.0.1", port, ConnectOptions("test", **options), timeout=WAIT)  # type: ignore[arg-type]


async def test_refused_connection_names_the_reason_never_the_password() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer, connack=b"\x00\x04")
        await reader.read()

    async with scripted_broker(refuse) as port:
        with pytest.raises(MqttError, match="bad user name or password") as raised:
            await _open(port, username="u", password=PASSWORD)
    assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)


async def test_no_connack_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with scripted_broker(silent) as port:
        with pytest.raises(MqttError, match="no CONNACK"):
            await Connection.open("127.0.0.1", port, ConnectOptions("test"), timeout=0.3)


async def test_nothing_listening_is_an_mqtt_error() -> None:
    async with scripted_broker(_accept) as port:
        pass
    with pytest.raises(MqttError, match="cannot connect"):
        await _open(port)


async def test_coalesced_and_out_of_order_acks_all_arrive_in_one_call() -> None:
    async def ack_backwards(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        ids = []
        for _ in range(3):
            first, body = await _read_packet(reader)
            assert first == 0x32
            ids.append(body[-3 - 2 : -3])  # topic "t", then the id, then the 3-byte payload
        writer.write(b"".join(_packet(0x40, packet_id) for packet_id in reversed(ids)))
        await reader.read()

    async with scripted_broker(ack_backwards) as port:
        connection = await _open(port)
        calls: list[list[int]] = []
        got = asyncio.Event()
        connection.on_acks = lambda ids: (calls.append(ids), got.set())  # type: ignore[func-returns-value]
        sent = [connection.publish("t", b"abc", 1, False) for _ in range(3)]
        connection.flush()
        await asyncio.wait_for(got.wait(), WAIT)
        assert calls == [list(reversed(sent))]
        await connection.disconnect()


async def test_qos2_releases_on_pubrec_and_completes_on_pubcomp() -> None:
    async def qos2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        first, body = await _read_packet(reader)
        assert first == 0x34  # QoS 2
        packet_id = body[3:5]
        writer.write(_packet(0x50, packet_id))  # PUBREC
        assert await _read_packet(reader) == (0x62, packet_id)  # PUBREL
        writer.write(_packet(0x70, packet_id))  # PUBCOMP
        await reader.read()

    async with scripted_broker(qos2) as port:
        connection = await _open(port)
        acked: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        connection.on_acks = acked.set_result
        packet_id = connection.publish("t", b"x", 2, False)
        connection.flush()
        assert await asyncio.wait_for(acked, WAIT) == [packet_id]
        await connection.disconnect()


async def test_mqtt5_receive_maximum_and_refused_publish() -> None:
    async def v5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer, connack=b"\x00\x00\x03\x21\x00\x07")
        _, body = await _read_packet(reader)
        writer.write(_packet(0x40, body[3:5] + b"\x87\x00"))  # not authorized
        await reader.read()

    async with scripted_broker(v5) as port:
        connection = await _open(port, version=5)
        assert connection.receive_maximum == 7
        acked: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        connection.on_acks = acked.set_result
        connection.publish("t", b"x", 1, False)
        connection.flush()
        await asyncio.wait_for(acked, WAIT)
        assert connection.refused == 1
        await connection.disconnect()


async def test_a_silent_broker_fails_the_keepalive() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        await reader.read()  # PINGREQs go unanswered

    async with scripted_broker(deaf) as port:
        connection = await _open(port, keepalive=1)
        with pytest.raises(MqttError, match="PINGRESP"):
            await asyncio.wait_for(connection.closed, WAIT)


async def test_answered_pings_keep_the_connection() -> None:
    pings = asyncio.Event()

    async def ponger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        for _ in range(3):
            assert await _read_packet(reader) == (0xC0, b"")
            writer.write(b"\xd0\x00")
        pings.set()
        await reader.read()

    async with scripted_broker(ponger) as port:
        connection = await _open(port, keepalive=1)
        await asyncio.wait_for(pings.wait(), WAIT)
        assert not connection.closed.done()
        await connection.disconnect()


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00", b"\xf0\x00", b"\x40\x00", b"\x30\xff\xff\xff\xff\xff", _packet(0xE0, b"\x8b")],
    ids=["type-0", "type-15", "short-puback", "bad-length", "v5-disconnect"],
)
async def test_malformed_or_hostile_packets_end_the_session_cleanly(garbage: bytes) -> None:
    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        writer.write(garbage)
        await reader.read()

    async with scripted_broker(hostile) as port:
        connection = await _open(port)
        with pytest.raises(MqttError):
            await asyncio.wait_for(connection.closed, WAIT)
        with pytest.raises(MqttError):
            connection.publish("t", b"x", 1, False)
            connection.flush()


async def test_incoming_publish_is_acknowledged_and_queued() -> None:
    acknowledged = asyncio.Event()

    async def announce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        first, body = await _read_packet(reader)
        assert first == 0x82
        writer.write(_packet(0x90, body[:2] + b"\x01"))  # SUBACK, QoS 1 granted
        writer.write(_packet(0x32, _string("homeassistant/status") + b"\x00\x09" + b"online"))
        assert await _read_packet(reader) == (0x40, b"\x00\x09")
        acknowledged.set()
        await reader.read()

    async with scripted_broker(announce) as port:
        connection = await _open(port)
        await connection.subscribe("homeassistant/status", 1, timeout=WAIT)
        assert await asyncio.wait_for(connection.messages.get(), WAIT) == ("homeassistant/status", b"online")
        await asyncio.wait_for(acknowledged.wait(), WAIT)
        await connection.disconnect()


async def test_refused_subscription_is_an_error() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accept(reader, writer)
        _, body = await _read_packet(reader)
        writer.write(_packet(0x90, body[:2] + b"\x80"))
        await reader.read()

    async with scripted_broker(refuse) as port:
        connection = await _open(port)
        with pytest.raises(MqttError, match="refused the subscription"):
            await connection.subscribe("x", 1, timeout=WAIT)
        await connection.disconnect()


class _MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8), version=st.sampled_from([4, 5]))
async def test_no_byte_sequence_from_a_broker_escapes_as_an_exception(chunks: list[bytes], version: int) -> None:
    """Whatever a broker (or something pretending to be one) sends ends, at worst, this session."""
    connection = Connection(ConnectOptions("fuzz", version=version))
    transport = _MemoryTransport()
    connection.connection_made(transport)
    connection.on_acks = lambda ids: None
    for chunk in [b"\x20\x02\x00\x00", *chunks]:  # a CONNACK first, as after a real connect
        connection.data_received(chunk)  # must not raise
        if connection.closed.done():
            assert isinstance(connection.closed.exception(), MqttError)
            assert transport.closing
            break
