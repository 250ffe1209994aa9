"""CRCs used on meter lines, computed without per-byte Python loops where possible."""

from __future__ import annotations

import binascii
from typing import Final

# Bit-reversal of every byte value, for bytes.translate().
REVERSE_BITS: Final = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse16(value: int) -> int:
    return (REVERSE_BITS[value & 0xFF] << 8) | REVERSE_BITS[value >> 8]


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X.25 (HDLC HCS/FCS): reflected poly 0x1021, init 0xFFFF, xorout 0xFFFF.

    binascii.crc_hqx is the non-reflected CRC-CCITT; feeding it bit-reversed bytes and reversing the
    result gives the reflected variant at C speed.
    """
    crc = binascii.crc_hqx(bytes(data).translate(REVERSE_BITS), 0xFFFF)
    return ((REVERSE_BITS[crc & 0xFF] << 8) | REVERSE_BITS[crc >> 8]) ^ 0xFFFF  # _reverse16 inlined


# The X.25 CRC of a message followed by its own CRC (least significant byte first) is a constant: in
# the bit-reversed domain used above, 0x1D0F (the reflected "good FCS" 0xF0B8, reversed).
X25_GOOD: Final = 0x1D0F
# The same check over an HDLC frame with its flags (0x7E, its own bit reversal): the register value
# that the opening flag turns into the initial 0xFFFF, and the value a closing flag after a good FCS
# leaves. (One byte's step is a bijection of the register, so these checks are exactly the plain one.)
X25_BEFORE_FLAG: Final = 0x600C
X25_GOOD_THEN_FLAG: Final = 0x53C5


def x25_ok(data: bytes | bytearray) -> bool:
    """True if `data` ends with its correct CRC-16/X.25 (HDLC HCS or FCS check in one C call)."""
    return binascii.crc_hqx(data.translate(REVERSE_BITS), 0xFFFF) == X25_GOOD


# CRC-16/ARC (DSMR P1): reflected poly 0x8005 (0xA001 reflected), init 0, no xorout. binascii has no
# C routine for this polynomial and even a 16-bit table loop costs ~25 ns per byte, so the message is
# reduced as one big integer instead, in a handful of C-level shifts and XORs:
#
# * Reflected CRC of bytes = bit-reversed plain CRC of the bit-reversed bytes (as for X.25 above),
#   and the plain CRC with init 0 is M(x) * x^16 mod P(x) over GF(2).
# * P = x^16 + x^15 + x^2 + 1 = (x + 1)(x^15 + x + 1). Mod x + 1 is the parity of M. Mod the
#   trinomial T = x^15 + x + 1, Frobenius gives x^(15 * 2^j) = (x + 1)^(2^j) = x^(2^j) + 1, so the
#   bits above position k = 15 * 2^j fold down as H * x^k = H << 2^j ^ H: two shifts, three XORs,
#   about halving the length each time.
# * The two residues combine (CRT) into R = r + c * T, with c chosen so that R has M's parity.
_TRINOMIAL: Final = (1 << 15) | 0b11
_fold_plans: dict[int, tuple[tuple[int, int, int], ...]] = {}


def _fold_plan(length: int) -> tuple[tuple[int, int, int], ...]:
    """(k, 2^j, mask of the k low bits) folds, k = 15 * 2^j, taking a polynomial of under `length`
    bits below 15 bits.

    Each fold picks the k that leaves the shortest bound max(k, length - k + 2^j); bounds rather
    than actual lengths, so one plan serves every message of that length.
    """
    plan = []
    while length > 15:
        bound, step = min(
            (max(15 << j, length - (15 << j) + (1 << j)), 1 << j)
            for j in range((length - 1).bit_length())
            if 15 << j < length
        )
        plan.append((15 * step, step, (1 << (15 * step)) - 1))
        length = bound
    return tuple(plan)


def crc16_arc(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/ARC (a.k.a. CRC-16/IBM, the DSMR P1 telegram CRC): reflected 0xA001, init 0."""
    poly = int.from_bytes(bytes(data).translate(REVERSE_BITS), "big") << 16
    parity = poly.bit_count() & 1
    length = poly.bit_length()
    plan = _fold_plans.get(length)
    if plan is None:
        if len(_fold_plans) >= 256:  # telegram lengths vary little; stay bounded anyway
            _fold_plans.clear()
        plan = _fold_plans[length] = _fold_plan(length)
    for shift, step, low_bits in plan:
        high = poly >> shift
        # (masking keeps the low part without building high << shift, a number as long as poly)
        poly = (poly & low_bits) ^ (high << step) ^ high
    if poly.bit_count() & 1 != parity:
        poly ^= _TRINOMIAL
    return _reverse16(poly)
