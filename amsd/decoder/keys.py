"""Key parsing shared by the decoder API, the CLI and the config."""

from __future__ import annotations

import re
from typing import Final

KEY_BYTES: Final = 16
# Separators people paste keys with, and 0x prefixes (on the whole key or on every byte).
_NOISE: Final = re.compile(r"[\s:,\-]|0[xX]")
_HEX: Final = re.compile(r"[0-9a-fA-F]*")


class InvalidKeyError(ValueError):
    """A key that is not 16 bytes. The message names the field, never the value."""


def key_from_text(text: str) -> bytes:
    """32 hex characters once separators and 0x prefixes are gone -> 16 bytes.

    ValueError says what is wrong in terms of lengths and character classes, never the value."""
    cleaned = _NOISE.sub("", text)
    if len(cleaned) != 2 * KEY_BYTES:
        raise ValueError(f"must be {2 * KEY_BYTES} hex characters (got {len(cleaned)})")
    if not _HEX.fullmatch(cleaned):
        raise ValueError("must contain only hex digits 0-9 and a-f")
    return bytes.fromhex(cleaned)


def parse_key(key: bytes | str | None, field: str) -> bytes | None:
    """Accept 16 raw bytes or 32 hex characters (spaces, colons, commas, dashes and 0x
    prefixes tolerated); None or an empty text means no key."""
    if key is None:
        return None
    if isinstance(key, bytes | bytearray):
        if len(key) != KEY_BYTES:
            raise InvalidKeyError(f"{field}: must be {KEY_BYTES} bytes (got {len(key)})")
        return bytes(key)
    if not _NOISE.sub("", key):
        return None
    try:
        return key_from_text(key)
    except ValueError as exc:
        raise InvalidKeyError(f"{field}: {exc}") from None
