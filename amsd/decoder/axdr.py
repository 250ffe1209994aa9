"""A-XDR decoding of DLMS `Data` (IEC 62056-6-2 / Green Book "Data" CHOICE).

Decoded values are plain Python objects, so that callers can match on them cheaply:

| A-XDR type | tag | Python |
|---|---|---|
| null-data | 0 | `None` |
| array | 1 | `list` |
| structure | 2 | `tuple` |
| boolean | 3 | `bool` |
| bit-string | 4 | `BitString` |
| all integer types (8 to 64 bits, signed and unsigned) | 5, 6, 15-18, 20, 21 | `int` |
| enum | 22 | `Enum` (an `int`) |
| bcd | 13 | `Bcd` (an `int`, the raw byte) |
| octet-string | 9 | `bytes` |
| visible-string / utf8-string | 10, 12 | `str` |
| float32 / float64 | 23, 24 | `float` (float32: its shortest decimal) |
| date-time / date / time | 25, 26, 27 | `DateTime` / `Date` / `Time` (`bytes` with the 12/5/4 raw bytes) |

compact-array (19) is rejected with `ApduError("unsupported_type")`: no meter push seen in the field uses
it, and decoding it half-way would be a guess. Every length is checked against the bytes present; an
unknown tag or a truncated element raises `ApduError`, never IndexError or a guessed length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Final, TypeAlias

from amsd.decoder.errors import LayerError

# Hostile input must not exhaust the stack; real push lists nest at most 3-4 levels.
MAX_DEPTH: Final = 16


class ApduError(LayerError):
    """Malformed or unsupported APDU."""


class Enum(int):
    """An A-XDR enum (tag 22), kept apart from unsigned so that {scaler, unit} can be recognised."""

    __slots__ = ()


class Bcd(int):
    """An A-XDR bcd (tag 13): the raw byte."""

    __slots__ = ()


class DateTime(bytes):
    """A typed A-XDR date-time (tag 25): the 12 raw bytes (see `cosem_datetime`)."""


class Date(bytes):
    """A typed A-XDR date (tag 26): year(2) month day weekday."""


class Time(bytes):
    """A typed A-XDR time (tag 27): hour minute second hundredths."""


@dataclass(slots=True, frozen=True)
class BitString:
    """An A-XDR bit-string: `bits` significant bits, most significant bit of `data[0]` first."""

    bits: int
    data: bytes

    def __str__(self) -> str:
        return (
            format(int.from_bytes(self.data, "big") >> (len(self.data) * 8 - self.bits), f"0{self.bits}b")
            if self.bits
            else ""
        )


Data: TypeAlias = object  # see the module docstring for the possible types

TAG_NULL: Final = 0
TAG_ARRAY: Final = 1
TAG_STRUCTURE: Final = 2
TAG_BOOLEAN: Final = 3
TAG_BIT_STRING: Final = 4
TAG_OCTET_STRING: Final = 9
TAG_VISIBLE_STRING: Final = 10
TAG_UTF8_STRING: Final = 12
TAG_BCD: Final = 13
TAG_COMPACT_ARRAY: Final = 19
TAG_ENUM: Final = 22
TAG_FLOAT32: Final = 23
TAG_DATE_TIME: Final = 25
TAG_DATE: Final = 26
TAG_TIME: Final = 27

# Fixed-size numbers: tag -> (unpacker, size).
_NUMBERS: Final[dict[int, tuple[struct.Struct, int]]] = {
    5: (struct.Struct(">i"), 4),
    6: (struct.Struct(">I"), 4),
    15: (struct.Struct(">b"), 1),
    16: (struct.Struct(">h"), 2),
    17: (struct.Struct(">B"), 1),
    18: (struct.Struct(">H"), 2),
    20: (struct.Struct(">q"), 8),
    21: (struct.Struct(">Q"), 8),
    23: (struct.Struct(">f"), 4),
    24: (struct.Struct(">d"), 8),
}
_UNPACK: Final = {tag: (s.unpack_from, size) for tag, (s, size) in _NUMBERS.items()}
_TYPED_TIME: Final[dict[int, tuple[type[bytes], int]]] = {
    TAG_DATE_TIME: (DateTime, 12),
    TAG_DATE: (Date, 5),
    TAG_TIME: (Time, 4),
}


def float32(value: float) -> float:
    """The shortest decimal that is the same float32 (0.1, not 0.10000000149011612)."""
    if value != value or value in (_INF, -_INF):
        return value
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if _F32.unpack(_F32.pack(float(text)))[0] == value:
            return float(text)
    return value


_INF: Final = float("inf")
_F32: Final = struct.Struct(">f")


def _truncated(pos: int) -> ApduError:
    return ApduError("truncated_apdu", f"A-XDR data ends early at offset {pos}")


def read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """BER length at `pos` -> (length, offset after it). Raises ApduError if cut off or unusable."""
    if pos >= len(buf):
        raise _truncated(pos)
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ApduError("bad_length", f"unsupported BER length form 0x{first:02X} at offset {pos}")
    end = pos + 1 + count
    if end > len(buf):
        raise _truncated(pos)
    return int.from_bytes(buf[pos + 1 : end], "big"), end


def decode_data(
    buf: bytes, pos: int = 0, depth: int = 0, offsets: dict[int, list[int]] | None = None
) -> tuple[Data, int]:
    """Decode one A-XDR `Data` element at `pos`: returns (value, offset after it).

    With `offsets`, every array/structure records where each of its elements starts, keyed by the
    container's id() (used to build frame templates, see amsd.decoder.dlms).
    """
    size = len(buf)
    if pos >= size:
        raise _truncated(pos)
    tag = buf[pos]
    pos += 1
    number = _UNPACK.get(tag)
    if number is not None:
        unpack, width = number
        if pos + width > size:
            raise _truncated(pos)
        if tag == TAG_FLOAT32:
            return float32(unpack(buf, pos)[0]), pos + width
        return unpack(buf, pos)[0], pos + width
    if tag in (TAG_OCTET_STRING, TAG_VISIBLE_STRING, TAG_UTF8_STRING):
        if pos < size and buf[pos] < 0x80:
            length = buf[pos]
            pos += 1
        else:
            length, pos = read_length(buf, pos)
        end = pos + length
        if end > size:
            raise _truncated(pos)
        raw = buf[pos:end]
        if tag == TAG_OCTET_STRING:
            return raw, end
        try:
            return raw.decode("utf-8" if tag == TAG_UTF8_STRING else "latin-1"), end
        except UnicodeDecodeError as exc:
            raise ApduError("bad_string", f"utf8-string is not UTF-8 at offset {pos}") from exc
    if tag in (TAG_STRUCTURE, TAG_ARRAY):
        if depth >= MAX_DEPTH:
            raise ApduError("too_deep", f"A-XDR nesting deeper than {MAX_DEPTH}")
        if pos < size and buf[pos] < 0x80:
            count = buf[pos]
            pos += 1
        else:
            count, pos = read_length(buf, pos)
        # Every element takes at least one byte: a count beyond the bytes left is a lie, not a guess.
        if count > size - pos:
            raise _truncated(pos)
        items: list[Data] = []
        append = items.append
        child_depth = depth + 1
        starts: list[int] = []
        mark = starts.append if offsets is not None else None
        for _ in range(count):
            if mark is not None:
                mark(pos)
            # Integers and short octet strings (OBIS codes), the bulk of any list, are read here
            # exactly as `decode_data` reads them, without a call per element.
            if pos < size:
                child = buf[pos]
                number = _UNPACK.get(child)
                if number is not None and child != TAG_FLOAT32:
                    unpack, width = number
                    end = pos + 1 + width
                    if end > size:
                        raise _truncated(pos + 1)
                    append(unpack(buf, pos + 1)[0])
                    pos = end
                    continue
                if child == TAG_OCTET_STRING and pos + 1 < size and buf[pos + 1] < 0x80:
                    end = pos + 2 + buf[pos + 1]
                    if end > size:
                        raise _truncated(pos + 2)
                    append(buf[pos + 2 : end])
                    pos = end
                    continue
            value, pos = decode_data(buf, pos, child_depth, offsets)
            append(value)
        if offsets is None:
            return (tuple(items) if tag == TAG_STRUCTURE else items), pos
        container: Data = tuple(items) if tag == TAG_STRUCTURE else items
        offsets[id(container)] = starts
        return container, pos
    if tag == TAG_NULL:
        return None, pos
    if tag in (TAG_ENUM, TAG_BOOLEAN, TAG_BCD):
        if pos >= size:
            raise _truncated(pos)
        byte = buf[pos]
        if tag == TAG_ENUM:
            return Enum(byte), pos + 1
        if tag == TAG_BCD:
            return Bcd(byte), pos + 1
        return byte != 0, pos + 1
    typed = _TYPED_TIME.get(tag)
    if typed is not None:
        kind, width = typed
        if pos + width > size:
            raise _truncated(pos)
        return kind(buf[pos : pos + width]), pos + width
    if tag == TAG_BIT_STRING:
        bits, pos = read_length(buf, pos)
        end = pos + (bits + 7) // 8
        if end > size:
            raise _truncated(pos)
        return BitString(bits, bytes(buf[pos:end])), end
    if tag == TAG_COMPACT_ARRAY:
        raise ApduError("unsupported_type", f"compact-array at offset {pos - 1} is not supported")
    raise ApduError("bad_axdr_tag", f"unknown A-XDR type tag 0x{tag:02X} at offset {pos - 1}")


def decode_all(buf: bytes, pos: int = 0) -> Data:
    """Decode exactly one `Data` element spanning `buf[pos:]`; trailing bytes are an error."""
    value, end = decode_data(buf, pos)
    if end != len(buf):
        raise ApduError("trailing_bytes", f"{len(buf) - end} bytes after the A-XDR data")
    return value


# ------------------------------------------------------------------------------------ date-time
_NOT_SPECIFIED_DEVIATION: Final = -0x8000
_DATETIME: Final = struct.Struct(">HBBBBBBBhB")
_TIMEZONES: dict[int, timezone] = {}


def cosem_datetime(raw: bytes, *, naive: bool = False) -> datetime | None:
    """COSEM date-time (12 bytes) -> datetime, or None if unspecified or invalid.

    Fields: year(2) month day weekday hour minute second hundredths deviation(int16 minutes) status.
    The deviation is UTC minus local time in minutes, so the ISO offset is -deviation.
    0x8000 (not specified), or `naive=True` (meters whose deviation is known to be wrong), gives a
    naive local wall-clock time. Unspecified (0xFF) time fields count as 0; an unspecified or
    impossible date gives None.
    """
    if len(raw) != 12:
        return None
    year, month, day, _weekday, hour, minute, second, hundredths, deviation, _status = _DATETIME.unpack(raw)
    if year == 0xFFFF or month > 12 or month == 0 or day > 31 or day == 0:
        return None
    if hour == 0xFF:
        hour = 0
    if minute == 0xFF:
        minute = 0
    if second == 0xFF:
        second = 0
    if hundredths >= 100:
        hundredths = 0
    tz: timezone | None = None
    if not (naive or deviation == _NOT_SPECIFIED_DEVIATION or not -840 <= deviation <= 840):
        tz = _TIMEZONES.get(deviation)
        if tz is None:
            tz = _TIMEZONES[deviation] = timezone(timedelta(minutes=-deviation))
    try:
        return datetime(year, month, day, hour, minute, second, hundredths * 10000, tz)  # one object, not two
    except ValueError:
        return None


def cosem_date(raw: bytes) -> date | None:
    """COSEM date (5 bytes: year(2) month day weekday) -> date, or None if unspecified or invalid."""
    if len(raw) != 5:
        return None
    year = int.from_bytes(raw[:2], "big")
    try:
        return date(year, raw[2], raw[3])
    except ValueError:
        return None


def cosem_time(raw: bytes) -> str | None:
    """COSEM time (4 bytes: hour minute second hundredths) -> "HH:MM:SS", or None if invalid."""
    if len(raw) != 4 or raw[0] > 23 or raw[1] > 59:
        return None
    second = 0 if raw[2] == 0xFF else raw[2]
    if second > 59:
        return None
    return f"{raw[0]:02d}:{raw[1]:02d}:{second:02d}"
