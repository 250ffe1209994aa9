"""General Block Transfer (GBT, APDU tag 0xE0) reassembly.

Layout of one block: `E0 | control | block number(2) | acknowledged block(2) | BER length | data`.
Control bit 0x80 marks the last block. Landis+Gyr meters send each block in its own HDLC frame and
sometimes restart a sequence mid-stream, so a block number 1 always starts a new message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from amsd.decoder.ber import read_length
from amsd.decoder.errors import LayerError

TAG: Final = 0xE0
LAST_BLOCK_BIT: Final = 0x80
MAX_MESSAGE: Final = 65536


class GbtError(LayerError):
    """A block that cannot be reassembled."""


# (last block?, block number, data): a plain tuple, since a block is built for every frame.
GbtBlock = tuple[bool, int, bytes]


def parse_block(apdu: bytes) -> GbtBlock:
    if len(apdu) < 7 or apdu[0] != TAG:
        raise GbtError("bad_block", "general block transfer header is cut short")
    size = apdu[6]
    start = 7
    if size >= 0x80:  # a long BER length form (blocks of 128 bytes and more)
        try:
            length = read_length(apdu, 6)
        except ValueError as exc:
            raise GbtError("bad_block", str(exc)) from None
        if length is None:
            raise GbtError("bad_block", "general block transfer length is cut short")
        size, start = length
    if start + size > len(apdu):
        raise GbtError("bad_block", f"block declares {size} bytes but carries {len(apdu) - start}")
    return bool(apdu[1] & LAST_BLOCK_BIT), (apdu[2] << 8) | apdu[3], apdu[start : start + size]


@dataclass(slots=True)
class GbtAssembler:
    """Collects blocks until the last one; reports what it had to throw away."""

    _parts: list[bytes] = field(default_factory=list)
    _raw: list[bytes] = field(default_factory=list)
    _next: int = 1
    _size: int = 0

    @property
    def pending_raw(self) -> bytes:
        return b"".join(self._raw)

    def reset(self) -> bytes:
        """Drop a partial message; returns its wire bytes (for reporting)."""
        raw = self.pending_raw
        self._parts.clear()
        self._raw.clear()
        self._next = 1
        self._size = 0
        return raw

    def add_apdu(self, apdu: bytes, raw: bytes) -> tuple[bytes | None, bytes, bytes, str | None] | None:
        """`add(parse_block(apdu), raw)`, with None for its most common result (the block was taken,
        nothing is complete and nothing was dropped). Raises GbtError as `parse_block` does.

        The next block in sequence with a short length is taken here directly: one call per frame
        of a GBT push instead of two and a tuple."""
        size = apdu[6] if len(apdu) > 7 else 0x80
        if size < 0x80 and ((apdu[2] << 8) | apdu[3]) == self._next and apdu[0] == TAG:
            end = 7 + size
            if end <= len(apdu) and self._size + size <= MAX_MESSAGE:
                self._parts.append(apdu[7:end])
                self._raw.append(raw)
                self._size += size
                self._next += 1
                if not apdu[1] & LAST_BLOCK_BIT:
                    return None
                return b"".join(self._parts), self.reset(), b"", None
        return self.add(parse_block(apdu), raw)

    def add(self, block: GbtBlock, raw: bytes) -> tuple[bytes | None, bytes, bytes, str | None]:
        """Add one block.

        Returns (complete APDU or None, wire bytes of that APDU, wire bytes of a discarded partial
        message, reason for the discard).
        """
        last, number, data = block
        discarded = b""
        reason: str | None = None
        if number == 1 and self._parts:
            reason = "restarted"
            discarded = self.reset()
        elif number != self._next:
            reason = "block_lost"
            discarded = self.reset() + raw
            return None, b"", discarded, reason
        self._parts.append(data)
        self._raw.append(raw)
        self._size += len(data)
        self._next = number + 1
        if self._size > MAX_MESSAGE:
            return None, b"", self.reset(), "too_long"
        if not last:
            return None, b"", discarded, reason
        apdu = b"".join(self._parts)
        return apdu, self.reset(), discarded, reason
