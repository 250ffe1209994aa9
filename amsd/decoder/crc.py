"""CRCs used on meter lines, computed without per-byte Python loops where possible."""

from __future__ import annotations

import binascii

# Bit-reversal of every byte value, for bytes.translate().
_REVERSE_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse16(value: int) -> int:
    return (_REVERSE_BITS[value & 0xFF] << 8) | _REVERSE_BITS[value >> 8]


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X.25 (HDLC HCS/FCS): reflected poly 0x1021, init 0xFFFF, xorout 0xFFFF.

    binascii.crc_hqx is the non-reflected CRC-CCITT; feeding it bit-reversed bytes and reversing the
    result gives the reflected variant at C speed.
    """
    crc = binascii.crc_hqx(bytes(data).translate(_REVERSE_BITS), 0xFFFF)
    return _reverse16(crc) ^ 0xFFFF
