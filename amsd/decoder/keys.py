"""Key parsing shared by the decoder API, the CLI and the config."""

from __future__ import annotations

import re
from typing import Final

KEY_BYTES: Final = 16
# Separators people paste keys with, and 0x prefixes (on the whole key or on every byte).
_NOISE: Final = re.compile(r"[\s:,\-]|0[xX]")


class InvalidKeyError(ValueError):
    """A key that is not 16 bytes. The message names the field, never the value."""


def parse_key(key: bytes | str | None, field: str) -> bytes | None:
    """Accept 16 raw bytes or 32 hex characters (spaces, colons, commas, dashes and 0x
    prefixes tolerated)."""
    if key is None:
        return None
    if isinstance(key, bytes | bytearray):
        if len(key) != KEY_BYTES:
            raise InvalidKeyError(f"{field}: must be {KEY_BYTES} bytes (got {len(key)})")
        return bytes(key)
    text = _NOISE.sub("", key)
    if not text:
        return None
    if len(text) != 2 * KEY_BYTES:
        raise InvalidKeyError(f"{field}: must be {2 * KEY_BYTES} hex characters (got {len(text)})")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidKeyError(f"{field}: must contain only hex digits") from None
