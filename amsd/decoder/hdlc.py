"""HDLC frame format type 3 as used on HAN ports (IEC 62056-46 push frames).

Frames are delimited by their length field, never by the 0x7E flag: HAN ports do no byte stuffing, so
0x7E occurs inside payloads. The header checksum (HCS) lets the stream layer reject false starts
early, before waiting for a frame that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from amsd.decoder.crc import x25_ok

FLAG: Final = 0x7E
SEGMENTED_BIT: Final = 0x08
MAX_ADDRESS_BYTES: Final = 4
# format(2) + dst(1) + src(1) + control(1) + HCS(2): the shortest frame without an information field.
MIN_LENGTH: Final = 7

# A complete header up to the control byte, in one C-level match: flag, format type 3, length byte,
# destination and source addresses (up to 3 bytes with bit 0 clear, then one with bit 0 set), control.
# Anything this does not match goes through the byte-wise check.
_EVEN: Final = b"[" + b"".join(re.escape(bytes((value,))) for value in range(0, 256, 2)) + b"]"
_ODD: Final = b"[" + b"".join(re.escape(bytes((value,))) for value in range(1, 256, 2)) + b"]"
HEADER: Final = re.compile(rb"\x7e[\xa0-\xaf].(?:%s{0,3}%s){2}." % (_EVEN, _ODD), re.DOTALL)


@dataclass(slots=True)
class HdlcHeader:
    length: int  # bytes between the flags
    segmented: bool
    control: int  # (the addresses are not kept: nothing on a push-only HAN port needs them)
    header_end: int  # offset after HCS, relative to the opening flag


def parse_header(buf: bytes | bytearray, start: int) -> HdlcHeader | bool | None:
    """Check an HDLC header at `buf[start]` (the opening flag).

    Returns the header when format and HCS are valid, None when more bytes are needed, and False when
    this is not a frame start. Runs once per frame and at every candidate flag, so it is kept flat.
    """
    match = HEADER.match(buf, start)
    hcs_at = match.end() if match is not None else _hcs_offset_bytewise(buf, start)
    if hcs_at is None or isinstance(hcs_at, bool):
        return hcs_at
    fmt_hi = buf[start + 1]
    length = ((fmt_hi & 0x07) << 8) | buf[start + 2]
    header_end = hcs_at + 2
    if length < MIN_LENGTH or header_end - start - 1 > length:
        return False
    if header_end > len(buf):
        return None
    if not x25_ok(buf[start + 1 : header_end]):
        return False
    return HdlcHeader(length, bool(fmt_hi & SEGMENTED_BIT), buf[hcs_at - 1], header_end - start)


def _hcs_offset_bytewise(buf: bytes | bytearray, start: int) -> int | Literal[False] | None:
    """Offset of the HCS for what the regular expression does not match: None when more bytes are
    needed, False when the format or an address is not HDLC."""
    end = len(buf)
    if end - start < 3:
        return None
    if buf[start + 1] & 0xF0 != 0xA0 or ((buf[start + 1] & 0x07) << 8) | buf[start + 2] < MIN_LENGTH:
        return False  # (the length check again, so that a short length is refused before waiting)
    control_at = _address_end(buf, start + 3, end)
    if control_at is None or isinstance(control_at, bool):
        return control_at
    control_at = _address_end(buf, control_at, end)
    if control_at is None or isinstance(control_at, bool):
        return control_at
    return control_at + 1


def _address_end(buf: bytes | bytearray, begin: int, end: int) -> int | Literal[False] | None:
    """Offset after the address at `begin`: it ends at its first byte with bit 0 set, within 4 bytes."""
    pos = begin
    limit = begin + MAX_ADDRESS_BYTES
    while pos < end and pos < limit and not buf[pos] & 1:
        pos += 1
    if pos == limit:
        return False
    if pos >= end:
        return None
    return pos + 1


def fcs_ok(frame: bytes) -> bool:
    """`frame` runs from the opening flag through the FCS (the closing flag is optional)."""
    return x25_ok(frame[1 : (((frame[1] & 0x07) << 8) | frame[2]) + 1])


def information(frame: bytes, header: HdlcHeader) -> bytes:
    """The information field: after the HCS, before the FCS (empty for header-only frames)."""
    if header.length == header.header_end - 1:
        return b""
    return frame[header.header_end : header.length - 1]
