"""A-XDR and data-notification parsing: every type, BER lengths, truncation, hostile input.

The first part is a tiny A-XDR encoder used by these tests and by tests/test_dlms.py.
"""

from __future__ import annotations

import contextlib
import math
import struct
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsd.decoder.apdu import ApduError, parse_data_notification
from amsd.decoder.axdr import (
    MAX_DEPTH,
    Bcd,
    BitString,
    Date,
    DateTime,
    Enum,
    Time,
    cosem_date,
    cosem_datetime,
    cosem_time,
    decode_all,
    decode_data,
)


def ber(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def null() -> bytes:
    return b"\x00"


def array(*items: bytes) -> bytes:
    return b"\x01" + ber(len(items)) + b"".join(items)


def struct_(*items: bytes) -> bytes:
    return b"\x02" + ber(len(items)) + b"".join(items)


def boolean(value: bool) -> bytes:
    return b"\x03" + (b"\x01" if value else b"\x00")


def bits(count: int, data: bytes) -> bytes:
    return b"\x04" + ber(count) + data


def i32(value: int) -> bytes:
    return b"\x05" + struct.pack(">i", value)


def u32(value: int) -> bytes:
    return b"\x06" + struct.pack(">I", value)


def octet(data: bytes) -> bytes:
    return b"\x09" + ber(len(data)) + data


def visible(text: str) -> bytes:
    data = text.encode("latin-1")
    return b"\x0a" + ber(len(data)) + data


def utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"\x0c" + ber(len(data)) + data


def bcd(value: int) -> bytes:
    return b"\x0d" + bytes([value])


def i8(value: int) -> bytes:
    return b"\x0f" + struct.pack(">b", value)


def i16(value: int) -> bytes:
    return b"\x10" + struct.pack(">h", value)


def u8(value: int) -> bytes:
    return b"\x11" + bytes([value])


def u16(value: int) -> bytes:
    return b"\x12" + struct.pack(">H", value)


def i64(value: int) -> bytes:
    return b"\x14" + struct.pack(">q", value)


def u64(value: int) -> bytes:
    return b"\x15" + struct.pack(">Q", value)


def enum(value: int) -> bytes:
    return b"\x16" + bytes([value])


def f32(value: float) -> bytes:
    return b"\x17" + struct.pack(">f", value)


def f64(value: float) -> bytes:
    return b"\x18" + struct.pack(">d", value)


def obis_raw(text: str) -> bytes:
    ab, cdef = text.split(":")
    a, b = ab.split("-")
    return bytes([int(a), int(b), *(int(x) for x in cdef.split("."))])


def obis(text: str) -> bytes:
    return octet(obis_raw(text))


def cosem_dt(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int,
    deviation: int = -0x8000,
    status: int = 0,
    weekday: int = 0xFF,
    hundredths: int = 0,
) -> bytes:
    """12 raw bytes of a COSEM date-time (deviation in minutes, -0x8000 = not specified)."""
    return struct.pack(
        ">HBBBBBBBhB", year, month, day, weekday, hour, minute, second, hundredths, deviation, status
    )


def scaler_unit(scaler: int, unit: int) -> bytes:
    return struct_(i8(scaler), enum(unit))


def notification(
    body: bytes, header_time: bytes | None = None, *, style: str = "tagged", invoke_id: int = 1
) -> bytes:
    """`0F | invoke-id | date-time | body`.

    style: tagged (09 0C), bare (0C, Kamstrup), typed (19), absent (00).
    """
    head = b"\x0f" + invoke_id.to_bytes(4, "big")
    if header_time is None or style == "absent":
        return head + b"\x00" + body
    if style == "tagged":
        return head + b"\x09\x0c" + header_time + body
    if style == "bare":
        return head + b"\x0c" + header_time + body
    if style == "typed":
        return head + b"\x19" + header_time + body
    raise ValueError(style)


# ------------------------------------------------------------------------------------------ types
@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (null(), None),
        (boolean(True), True),
        (boolean(False), False),
        (i32(-123456), -123456),
        (u32(4000000000), 4000000000),
        (i8(-3), -3),
        (i16(-300), -300),
        (u8(200), 200),
        (u16(65535), 65535),
        (i64(-(2**62)), -(2**62)),
        (u64(2**64 - 1), 2**64 - 1),
        (octet(b"\x01\x02"), b"\x01\x02"),
        (visible("AIDON_V0001"), "AIDON_V0001"),
        (utf8("Zähler"), "Zähler"),
        (f64(1.5), 1.5),
        (array(u8(1), u8(2)), [1, 2]),
        (struct_(u8(1), visible("x")), (1, "x")),
        (struct_(), ()),
    ],
)
def test_decodes_each_type(encoded: bytes, expected: object) -> None:
    value = decode_all(encoded)
    assert value == expected
    assert type(value) is type(expected)


def test_enum_bcd_and_typed_times_keep_their_type() -> None:
    assert type(decode_all(enum(27))) is Enum and decode_all(enum(27)) == 27
    assert type(decode_all(bcd(0x42))) is Bcd and decode_all(bcd(0x42)) == 0x42
    stamp = cosem_dt(2024, 3, 1, 12, 0, 0)
    assert type(decode_all(b"\x19" + stamp)) is DateTime
    assert type(decode_all(b"\x1a" + stamp[:5])) is Date
    assert type(decode_all(b"\x1b" + b"\x0c\x1e\x00\x00")) is Time


def test_float32_is_clean() -> None:
    assert decode_all(f32(0.1)) == 0.1
    assert math.isinf(decode_all(f32(float("inf"))))  # type: ignore[arg-type]


def test_bit_string() -> None:
    value = decode_all(bits(10, b"\xa5\xc0"))
    assert value == BitString(10, b"\xa5\xc0")
    assert str(value) == "1010010111"


def test_ber_lengths() -> None:
    long_octets = bytes(range(256)) * 2
    encoded = octet(long_octets)
    assert encoded[1:4] == b"\x82\x02\x00"
    assert decode_all(encoded) == long_octets
    assert decode_all(b"\x09\x81\x03abc") == b"abc"
    assert decode_all(array(*[u8(7)] * 200)) == [7] * 200  # count 0x81 0xC8


def test_unknown_tag_and_compact_array_fail_cleanly() -> None:
    with pytest.raises(ApduError) as info:
        decode_all(b"\x07\x00")
    assert info.value.code == "bad_axdr_tag"
    with pytest.raises(ApduError) as info:
        decode_all(b"\x13\x00\x00")
    assert info.value.code == "unsupported_type"


def test_bad_ber_length_forms() -> None:
    for encoded in (b"\x09\x80", b"\x09\x85\x00\x00\x00\x00\x01"):
        with pytest.raises(ApduError):
            decode_all(encoded)


def test_count_larger_than_data_is_rejected_without_allocating() -> None:
    with pytest.raises(ApduError):
        decode_all(b"\x01\x84\x7f\xff\xff\xff\x00")


def test_nesting_is_limited() -> None:
    deep = b"\x02\x01" * (MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(ApduError) as info:
        decode_all(deep)
    assert info.value.code == "too_deep"
    shallow = b"\x02\x01" * (MAX_DEPTH - 1) + b"\x00"
    decode_all(shallow)


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(ApduError) as info:
        decode_all(u8(1) + b"\x00")
    assert info.value.code == "trailing_bytes"


SAMPLE = array(
    struct_(obis("1-0:1.7.0.255"), u32(1234), scaler_unit(0, 27)),
    struct_(obis("0-0:1.0.0.255"), octet(cosem_dt(2024, 1, 2, 3, 4, 5, -60))),
    struct_(visible("id"), utf8("ü"), i64(-5), u64(5), f32(1.25), f64(2.5), bits(3, b"\xe0")),
    struct_(null(), boolean(True), bcd(1), i16(-2), u16(2), i8(-1), u8(1), enum(3)),
    b"\x19" + cosem_dt(2024, 1, 2, 3, 4, 5),
    b"\x1a" + cosem_dt(2024, 1, 2, 3, 4, 5)[:5],
    b"\x1b\x01\x02\x03\x04",
    octet(b"x" * 130),
)


def test_truncation_at_every_offset_raises_apdu_error() -> None:
    decode_all(SAMPLE)
    for cut in range(len(SAMPLE)):
        with pytest.raises(ApduError):
            decode_all(SAMPLE[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_apdu_error(data: bytes) -> None:
    with contextlib.suppress(ApduError):
        decode_data(data)
    with contextlib.suppress(ApduError):
        parse_data_notification(b"\x0f\x00\x00\x00\x01\x00" + data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.integers(min_value=0, max_value=len(SAMPLE)))
def test_mutated_sample_only_raises_apdu_error(noise: bytes, at: int) -> None:
    data = SAMPLE[:at] + noise + SAMPLE[at + len(noise) :]
    with contextlib.suppress(ApduError):
        decode_all(data)


# -------------------------------------------------------------------------------------- date-time
def test_cosem_datetime_offset_is_minus_deviation() -> None:
    stamp = cosem_datetime(cosem_dt(2021, 7, 19, 15, 46, 35, deviation=-120))
    assert stamp == datetime(2021, 7, 19, 15, 46, 35, tzinfo=timezone(timedelta(hours=2)))
    assert stamp is not None and stamp.isoformat() == "2021-07-19T15:46:35+02:00"


def test_cosem_datetime_unspecified_deviation_is_naive() -> None:
    stamp = cosem_datetime(cosem_dt(2020, 1, 25, 14, 0, 10))
    assert stamp == datetime(2020, 1, 25, 14, 0, 10) and stamp.tzinfo is None


def test_cosem_datetime_naive_override_and_hundredths() -> None:
    raw = cosem_dt(2023, 6, 6, 17, 31, 20, deviation=0, hundredths=18)
    assert cosem_datetime(raw, naive=True) == datetime(2023, 6, 6, 17, 31, 20, 180000)
    aware = cosem_datetime(raw)
    assert aware is not None and aware.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw",
    [
        cosem_dt(2021, 13, 1, 0, 0, 0),
        cosem_dt(2021, 2, 30, 0, 0, 0),
        cosem_dt(0xFFFF, 1, 1, 0, 0, 0),
        cosem_dt(2021, 0xFF, 1, 0, 0, 0),
        cosem_dt(2021, 1, 1, 25, 0, 0),
        b"\x07\xe5",
    ],
)
def test_cosem_datetime_invalid_gives_none(raw: bytes) -> None:
    assert cosem_datetime(raw) is None


def test_cosem_datetime_unspecified_time_fields_count_as_zero() -> None:
    raw = cosem_dt(2021, 1, 1, 0xFF, 0xFF, 0xFF, hundredths=0xFF)
    assert cosem_datetime(raw) == datetime(2021, 1, 1)


def test_cosem_datetime_absurd_deviation_is_naive() -> None:
    stamp = cosem_datetime(cosem_dt(2021, 1, 1, 1, 0, 0, deviation=5000))
    assert stamp is not None and stamp.tzinfo is None


def test_cosem_date_and_time() -> None:
    assert cosem_date(struct.pack(">HBBB", 2024, 2, 29, 4)) is not None
    assert cosem_date(struct.pack(">HBBB", 2023, 2, 29, 4)) is None
    assert cosem_time(b"\x0c\x1e\x05\x00") == "12:30:05"
    assert cosem_time(b"\x18\x00\x00\x00") is None


# ------------------------------------------------------------------------------ data-notification
BODY = struct_(u32(7))
STAMP = cosem_dt(2022, 1, 2, 14, 37, 18)


@pytest.mark.parametrize("style", ["tagged", "bare", "typed"])
def test_header_date_time_variants(style: str) -> None:
    note = parse_data_notification(notification(BODY, STAMP, style=style, invoke_id=0x40000000))
    assert note.invoke_id == 0x40000000
    assert note.timestamp == datetime(2022, 1, 2, 14, 37, 18)
    assert note.body == (7,)


def test_header_without_date_time() -> None:
    note = parse_data_notification(notification(BODY))
    assert note.timestamp is None and note.timestamp_raw is None
    assert note.body == (7,)


def test_header_tagged_octet_string_of_other_length_is_skipped() -> None:
    note = parse_data_notification(b"\x0f\x00\x00\x00\x01\x09\x00" + BODY)
    assert note.timestamp is None and note.body == (7,)


def test_notification_errors() -> None:
    cases = {
        b"": "unsupported_apdu",
        b"\xc0\x01\x00\x00\x08": "unsupported_apdu",
        b"\x0f\x00\x00": "truncated_apdu",
        b"\x0f\x00\x00\x00\x01\x00": "truncated_apdu",
        b"\x0f\x00\x00\x00\x01\x42" + BODY: "bad_header",
        notification(BODY) + b"\x00": "trailing_bytes",
    }
    for apdu, code in cases.items():
        with pytest.raises(ApduError) as info:
            parse_data_notification(apdu)
        assert info.value.code == code, apdu.hex()


def test_notification_truncated_anywhere() -> None:
    apdu = notification(SAMPLE, STAMP)
    for cut in range(len(apdu)):
        with pytest.raises(ApduError):
            parse_data_notification(apdu[:cut])


# ----------------------------------------------------------------- elements read inside containers
# `decode_data` reads integers and short octet strings inside arrays/structures without a recursive
# call: an element must decode the same inside a container as alone, truncated or not.
_SCALARS = st.one_of(
    st.integers(-(2**7), 2**7 - 1).map(i8),
    st.integers(0, 2**8 - 1).map(u8),
    st.integers(-(2**15), 2**15 - 1).map(i16),
    st.integers(0, 2**16 - 1).map(u16),
    st.integers(-(2**31), 2**31 - 1).map(i32),
    st.integers(0, 2**32 - 1).map(u32),
    st.integers(-(2**63), 2**63 - 1).map(i64),
    st.integers(0, 2**64 - 1).map(u64),
    st.floats(width=32, allow_nan=False).map(f32),
    st.floats(allow_nan=False).map(f64),
    st.binary(max_size=140).map(octet),
    st.text(st.characters(max_codepoint=255), max_size=20).map(visible),
    st.integers(0, 255).map(enum),
    st.booleans().map(boolean),
    st.just(null()),
)
_ELEMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(lambda items: array(*items)),
        st.lists(inner, max_size=5).map(lambda items: struct_(*items)),
    ),
    max_leaves=12,
)


def _outcome(buf: bytes, pos: int, offsets: dict[int, list[int]] | None = None) -> object:
    try:
        return decode_data(buf, pos, 0, offsets)
    except ApduError as exc:
        return ApduError, exc.code, exc.detail


@settings(max_examples=150, deadline=None)
@given(_ELEMENTS)
def test_an_element_decodes_the_same_inside_a_container(encoded: bytes) -> None:
    wrapped = struct_(encoded)
    for cut in range(3, len(wrapped) + 1):
        buf = wrapped[:cut]
        alone = _outcome(buf, 2)
        inside = _outcome(buf, 0)
        if isinstance(alone, tuple) and alone[0] is ApduError:
            assert inside == alone  # the same error at the same offset
        else:
            assert inside == ((alone[0],), alone[1])  # type: ignore[index]
            assert type(inside[0][0]) is type(alone[0])  # type: ignore[index]
    offsets: dict[int, list[int]] = {}
    value, _ = decode_data(wrapped, 0, 0, offsets)
    assert offsets[id(value)] == [2]
