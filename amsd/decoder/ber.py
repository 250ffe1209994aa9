"""BER length fields as used by DLMS (A-XDR and the ciphering header)."""

from __future__ import annotations


def read_length(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """Decode a BER length at `pos`: returns (length, offset after it), or None if incomplete.

    Raises ValueError for forms DLMS never uses (indefinite length, more than 4 length bytes).
    """
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ValueError(f"unsupported BER length form 0x{first:02X}")
    end = pos + 1 + count
    if end > len(buf):
        return None
    return int.from_bytes(buf[pos + 1 : end], "big"), end
