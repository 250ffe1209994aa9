"""DLMS general-glo-ciphering (APDU tag 0xDB): AES-128-GCM with a 12-byte tag.

Layout: `DB | ST length | system title | BER length | SC | invocation counter(4) | ciphertext | [tag]`.
IV = system title || invocation counter; AAD = SC || authentication key. SC bit 0x20 = encrypted,
0x10 = authenticated (12-byte tag follows), low nibble = security suite.

How a misfit is told apart from corruption:
- tag present and authentication key configured: GCM verifies the tag. If it fails, the ciphertext is
  decrypted anyway (CTR) and its plausibility decides between `wrong_key` (garbage) and
  `tag_mismatch` (the encryption key fits; the authentication key is wrong or the frame is damaged).
- no tag, or no authentication key: the plaintext must look like a DLMS APDU (the caller's
  `plausible` check), otherwise `wrong_key`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from amsd.decoder.ber import read_length
from amsd.decoder.errors import LayerError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TAG: Final = 0xDB
TAG_LENGTH: Final = 12
SC_AUTHENTICATED: Final = 0x10
SC_ENCRYPTED: Final = 0x20
MAX_SYSTEM_TITLE: Final = 8


class CipherError(LayerError):
    """Ciphering header or decryption failed."""


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build, once per frame
class GloHeader:
    system_title: bytes
    security_control: int
    invocation_counter: int
    body_start: int  # offset of the ciphertext
    end: int  # offset after the declared content

    @property
    def system_title_hex(self) -> str:
        return self.system_title.hex().upper()


def header_extent(buf: bytes | bytearray, start: int) -> int | bool | None:
    """End offset of a general-glo-ciphering APDU at `start`, None if more bytes are needed, False if
    the bytes cannot be one (used by the stream layer on bare APDUs)."""
    end = len(buf)
    if end - start < 2:
        return None
    st_len = buf[start + 1]
    if st_len > MAX_SYSTEM_TITLE:
        return False
    try:
        length = read_length(buf, start + 2 + st_len)
    except ValueError:
        return False
    if length is None:
        return None
    size, content = length
    if size < 5:
        return False
    if content < end:
        sc = buf[content]
        if sc & 0xC0 or not sc & 0x30:
            return False
    return content + size


def parse_header(apdu: bytes) -> GloHeader:
    if len(apdu) < 2 or apdu[0] != TAG:
        raise CipherError("bad_header", "not a general-glo-ciphering APDU")
    st_len = apdu[1]
    if st_len > MAX_SYSTEM_TITLE:
        raise CipherError("bad_header", f"system title length {st_len} exceeds 8")
    try:
        length = read_length(apdu, 2 + st_len)
    except ValueError as exc:
        raise CipherError("bad_header", str(exc)) from None
    if length is None:
        raise CipherError("truncated_apdu", "ciphering header is cut short")
    size, content = length
    if size < 5:
        raise CipherError("bad_header", f"declared length {size} is too short for SC and counter")
    if content + size > len(apdu):
        raise CipherError("truncated_apdu", f"declares {size} bytes but only {len(apdu) - content} are present")
    return GloHeader(
        system_title=apdu[2 : 2 + st_len],
        security_control=apdu[content],
        invocation_counter=int.from_bytes(apdu[content + 1 : content + 5], "big"),
        body_start=content + 5,
        end=content + size,
    )


@lru_cache(maxsize=8)
def _aead(key: bytes) -> AESGCM:
    # Building the key schedule costs several us (more than decrypting a whole frame), so it is done
    # once per key. Bounded: a decoder has one key; tests and tools may try a few.
    # Imported on first use: unencrypted lines (all of NO/SE, DSMR in NL) never need AES, and
    # `cryptography` maps its own OpenSSL (~8 MB of RSS).
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _ctr_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """GCM's keystream over `data` (counter blocks from J0 + 1, J0 = IV || 00000001).

    GCM encryption XORs the data with exactly that keystream and appends a 16-byte tag, and XOR is its
    own inverse, so `AESGCM.encrypt` decrypts: one C call instead of building a CTR Cipher object.
    """
    return _aead(key).encrypt(iv, data, None)[:-16]


def _gcm_decrypt(key: bytes, iv: bytes, tag: bytes, aad: bytes, data: bytes) -> bytes | None:
    """Decrypt and verify a truncated (12-byte) tag; None if it does not verify.

    AESGCM only verifies full 16-byte tags, so the tag is recomputed: encrypting the decrypted
    plaintext under the same IV and AAD reproduces the ciphertext and its full tag, whose first 12
    bytes must equal the received tag (compared in constant time).
    """
    aead = _aead(key)
    plaintext = aead.encrypt(iv, data, None)[:-16] if data else b""
    expected = aead.encrypt(iv, plaintext, aad)[-16:][:TAG_LENGTH]
    return plaintext if hmac.compare_digest(expected, tag) else None


def decrypt(
    apdu: bytes,
    header: GloHeader,
    encryption_key: bytes,
    authentication_key: bytes | None,
    plausible: Callable[[bytes], bool],
) -> bytes:
    """Return the plaintext APDU or raise CipherError (`wrong_key`, `tag_mismatch`, ...)."""
    sc = header.security_control
    body = apdu[header.body_start : header.end]
    iv = header.system_title + header.invocation_counter.to_bytes(4, "big")
    if len(iv) != 12:
        raise CipherError("bad_header", f"system title of {len(header.system_title)} bytes gives no 12-byte IV")
    authenticated = bool(sc & SC_AUTHENTICATED)
    encrypted = bool(sc & SC_ENCRYPTED)
    if authenticated:
        if len(body) < TAG_LENGTH:
            raise CipherError("truncated_apdu", "authenticated APDU is shorter than its tag")
        body, tag = body[:-TAG_LENGTH], body[-TAG_LENGTH:]
    if not encrypted:
        plaintext = body
        if authenticated and authentication_key is not None:
            aad = bytes([sc]) + authentication_key + plaintext
            if _gcm_decrypt(encryption_key, iv, tag, aad, b"") is None:
                raise CipherError("tag_mismatch", "authentication tag does not verify")
        return plaintext
    if authenticated and authentication_key is not None:
        plaintext_or_none = _gcm_decrypt(encryption_key, iv, tag, bytes([sc]) + authentication_key, body)
        if plaintext_or_none is not None:
            return plaintext_or_none
        if plausible(_ctr_decrypt(encryption_key, iv, body)):
            raise CipherError(
                "tag_mismatch",
                "authentication tag does not verify: the encryption key fits, so the authentication key "
                "is wrong or the frame was damaged",
            )
        raise CipherError("wrong_key", "the encryption key does not fit this meter (GCM tag and content)")
    plaintext = _ctr_decrypt(encryption_key, iv, body)
    if not plausible(plaintext):
        raise CipherError("wrong_key", "decrypted content is not a DLMS APDU: the encryption key does not fit")
    return plaintext
