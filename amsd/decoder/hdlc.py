"""HDLC frame format type 3 as used on HAN ports (IEC 62056-46 push frames).

Frames are delimited by their length field, never by the 0x7E flag: HAN ports do no byte stuffing, so
0x7E occurs inside payloads. The header checksum (HCS) lets the stream layer reject false starts
early, before waiting for a frame that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from amsd.decoder.crc import crc16_x25

FLAG: Final = 0x7E
SEGMENTED_BIT: Final = 0x08
MAX_ADDRESS_BYTES: Final = 4
# format(2) + dst(1) + src(1) + control(1) + HCS(2): the shortest frame without an information field.
MIN_LENGTH: Final = 7


@dataclass(slots=True)
class HdlcHeader:
    length: int  # bytes between the flags
    segmented: bool
    destination: bytes
    source: bytes
    control: int
    header_end: int  # offset after HCS, relative to the opening flag


def parse_header(buf: bytes | bytearray, start: int) -> HdlcHeader | bool | None:
    """Check an HDLC header at `buf[start]` (the opening flag).

    Returns the header when format and HCS are valid, None when more bytes are needed, and False when
    this is not a frame start. Runs once per frame and at every candidate flag, so it is kept flat.
    """
    end = len(buf)
    if end - start < 3:
        return None
    fmt_hi = buf[start + 1]
    if fmt_hi & 0xF0 != 0xA0:
        return False
    length = ((fmt_hi & 0x07) << 8) | buf[start + 2]
    if length < MIN_LENGTH:
        return False
    # Each address ends at its first byte with bit 0 set, after at most 4 bytes.
    dst_start = start + 3
    pos = dst_start
    limit = dst_start + MAX_ADDRESS_BYTES
    while pos < end and pos < limit and not buf[pos] & 1:
        pos += 1
    if pos == limit:
        return False
    if pos >= end:
        return None
    src_start = pos = pos + 1
    limit = src_start + MAX_ADDRESS_BYTES
    while pos < end and pos < limit and not buf[pos] & 1:
        pos += 1
    if pos == limit:
        return False
    if pos >= end:
        return None
    hcs_at = pos + 2  # after the last source byte and the control byte
    header_end = hcs_at + 2
    if header_end - start - 1 > length:
        return False
    if end < header_end:
        return None
    if crc16_x25(buf[start + 1 : hcs_at]) != buf[hcs_at] | (buf[hcs_at + 1] << 8):
        return False
    return HdlcHeader(
        length,
        bool(fmt_hi & SEGMENTED_BIT),
        bytes(buf[dst_start:src_start]),
        bytes(buf[src_start : pos + 1]),
        buf[pos + 1],
        header_end - start,
    )


def fcs_ok(frame: bytes) -> bool:
    """`frame` runs from the opening flag through the FCS (the closing flag is optional)."""
    length = ((frame[1] & 0x07) << 8) | frame[2]
    fcs_at = length - 1
    return crc16_x25(frame[1:fcs_at]) == (frame[fcs_at] | (frame[fcs_at + 1] << 8))


def information(frame: bytes, header: HdlcHeader) -> bytes:
    """The information field: after the HCS, before the FCS (empty for header-only frames)."""
    if header.length == header.header_end - 1:
        return b""
    return frame[header.header_end : header.length - 1]
