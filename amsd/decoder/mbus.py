"""Wired M-Bus long frames (EN 13757-2) carrying DLMS, as sent by Austrian and Polish meters.

Layout: `68 L L 68 | C | A | CI | STSAP | DTSAP | payload | CS | 16`. L counts C through the payload;
CS is the 8-bit sum of the same bytes. CI bit 0x10 marks the final segment and its low nibble is the
sequence number, so one APDU can span several frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

START: Final = 0x68
STOP: Final = 0x16
FINAL_SEGMENT_BIT: Final = 0x10


@dataclass(slots=True, frozen=True)
class MbusFrame:
    control: int
    address: int
    ci: int
    payload: bytes  # after CI and the two transport SAP bytes

    @property
    def final(self) -> bool:
        return bool(self.ci & FINAL_SEGMENT_BIT)

    @property
    def sequence(self) -> int:
        return self.ci & 0x0F


def frame_length(buf: bytes | bytearray, start: int) -> int | bool | None:
    """Total length of the long frame starting at `buf[start]` (0x68).

    None: more bytes needed to tell. False: not a long-frame header.
    """
    if len(buf) - start < 4:
        return None
    length = buf[start + 1]
    if buf[start + 2] != length or buf[start + 3] != START:
        return False
    # Austrian meters send `68 01 01 68` for a 257-byte frame: a DLMS frame cannot be that short
    # (C, A, CI and the two SAP bytes are mandatory), so a length below 4 means the count overflowed.
    if length < 4:
        length += 256
    return length + 6


def checksum_ok(frame: bytes) -> bool:
    body = frame[4:-2]
    return frame[-1] == STOP and sum(body) & 0xFF == frame[-2]


def parse(frame: bytes) -> MbusFrame:
    """Split a complete, checksum-verified long frame."""
    return MbusFrame(control=frame[4], address=frame[5], ci=frame[6], payload=frame[9:-2])
