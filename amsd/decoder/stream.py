"""Stream resynchronisation: find where frames start and end in a noisy byte stream.

Strong candidates carry their own integrity check and are trusted as soon as their header checks
out: HDLC (0x7E, format byte and HCS), wired M-Bus (`68 L L 68`) and DSMR telegrams (`/XXX5`).
Weak candidates are bare DLMS APDUs (LLC `E6 E7 00`, data-notification 0x0F, ciphering 0xDB) with no
envelope; they end where their own structure ends. A weak candidate that is still incomplete gives way
to a strong candidate further on, so a stray 0x0F in line noise can never swallow later good frames.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

from amsd.decoder import cipher, hdlc, mbus
from amsd.decoder.ber import read_length

CANDIDATE: Final = re.compile(rb"[\x7e\x68/\xdb\x0f\xe6]")
# What a strong start's first bytes must look like before its header is worth checking: HDLC flag +
# format type 3 (0xA_), M-Bus `68 L L 68`, DSMR `/` + three letters. Searching with this instead of
# CANDIDATE skips, in C, nearly every candidate byte inside ciphertext or binary values.
STRONG_PREFIX: Final = re.compile(rb"\x7e[\xa0-\xaf]|\x68(.)\1\x68|/[A-Za-z]{3}", re.DOTALL)
STRONG_PREFIX_SPAN: Final = 4  # the longest prefix above
# `/XXXZ ident`: three letters of manufacturer, then the ident (usually a baud-rate digit first, but
# not always: `/NWA-WARMTELINK`), then the line end.
DSMR_IDENT: Final = re.compile(rb"/[A-Za-z]{3}[^\r\n]{1,96}\r?\n")
DSMR_IDENT_PREFIX: Final = re.compile(rb"/(?:[A-Za-z]{0,2}|[A-Za-z]{3}[^\r\n]{0,96}\r?)\Z")
DSMR_END: Final = re.compile(rb"![0-9A-Fa-f]{0,4}\r?\n")
DSMR_CRC4: Final = re.compile(rb"![0-9A-Fa-f]{4}")
DSMR_NEXT_IDENT: Final = re.compile(rb"\n/[A-Za-z]{3}[^\r\n]{1,96}\r?\n")
# A telegram cut mid-line and followed at once by the next: its ident line has no line end before it,
# so demand what every ident line has after it (an empty line) and no value syntax inside it.
DSMR_CUT_IDENT: Final = re.compile(rb"/[A-Za-z]{3}[^\r\n()*!/]{1,96}\r?\n\r?\n")
MAX_DSMR_TELEGRAM: Final = 16384
MAX_BARE_APDU: Final = 65536
LLC_HEADERS: Final = (b"\xe6\xe7\x00", b"\xe6\xe6\x00")
MAX_DEPTH: Final = 32


class Kind(Enum):
    HDLC = "hdlc"
    MBUS = "mbus"
    DSMR = "dsmr"
    P1_CIPHERED = "p1_ciphered"  # clear P1 ident line + general-glo-ciphering body without its tag
    APDU = "apdu"


# A complete frame: its kind, its end offset, and (HDLC) the header already checked.
Probe = tuple[Kind, int, "hdlc.HdlcHeader | None"]


# Fixed sizes of A-XDR data after the tag; None = variable (handled explicitly).
_FIXED: Final[dict[int, int]] = {
    0: 0,
    3: 1,
    5: 4,
    6: 4,
    13: 1,
    15: 1,
    16: 2,
    17: 1,
    18: 2,
    20: 8,
    21: 8,
    22: 1,
    23: 4,
    24: 8,
    25: 12,
    26: 5,
    27: 4,
}
_STRINGS: Final = frozenset((9, 10, 12))


def axdr_extent(buf: bytes | bytearray, pos: int) -> int | bool | None:
    """End offset of one A-XDR element at `pos`: None if incomplete, False if not A-XDR.

    Only measures: no values are built. Iterative so hostile nesting cannot exhaust the stack.
    """
    end = len(buf)
    pending = [1]  # elements still to skip at each open level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            return None
        tag = buf[pos]
        pos += 1
        size = _FIXED.get(tag)
        if size is not None:
            pos += size
            continue
        try:
            length = read_length(buf, pos)
        except ValueError:
            return False
        if length is None:
            return None
        count, pos = length
        if tag in _STRINGS:
            pos += count
        elif tag == 4:  # bit-string: length in bits
            pos += (count + 7) // 8
        elif tag in (1, 2):
            if len(pending) >= MAX_DEPTH:
                return False
            pending.append(count)
        else:
            return False
        if pos > end and tag not in (1, 2):
            return None
    return pos if pos <= end else None


def notification_extent(buf: bytes | bytearray, start: int) -> int | bool | None:
    """End offset of a data-notification APDU (0x0F) at `start`."""
    end = len(buf)
    pos = start + 5  # tag + long-invoke-id-and-priority
    if pos >= end:
        return None
    marker = buf[pos]
    if marker == 0x00:
        pos += 1
    elif marker == 0x09:  # date-time as a tagged octet string
        if pos + 1 >= end:
            return None
        if buf[pos + 1] != 12:
            return False
        pos += 14
    elif marker in (0x0C, 0x19):  # untagged length (Kamstrup) or typed date-time
        pos += 13
    else:
        return False
    if pos > end:
        return None
    return axdr_extent(buf, pos)


def bare_apdu_extent(buf: bytes | bytearray, start: int) -> int | bool | None:
    pos = start
    if bytes(buf[pos : pos + 3]) in LLC_HEADERS:
        pos += 3
    elif buf[pos] == 0xE6:
        return None if len(buf) - pos < 3 else False
    if pos >= len(buf):
        return None
    tag = buf[pos]
    if tag == 0x0F:
        return notification_extent(buf, pos)
    if tag == cipher.TAG:
        return cipher.header_extent(buf, pos)
    return False


def probe(buf: bytes | bytearray, start: int, final: bool = False) -> Probe | bool | None:
    """What starts at `buf[start]`: (kind, end offset, header) for a complete frame, None if more bytes are
    needed to tell, False if nothing does. Integrity beyond the header is checked by the caller."""
    first = buf[start]
    if first == hdlc.FLAG:
        header = hdlc.parse_header(buf, start)
        if header is None or header is False:
            return header
        assert isinstance(header, hdlc.HdlcHeader)
        # The frame runs through the FCS; the closing flag stays, as it may open the next frame. Wait for
        # that flag anyway (unless the input has ended) so the frame's raw bytes always include it.
        end = start + header.length + 1
        return (Kind.HDLC, end, header) if end < len(buf) or (final and end == len(buf)) else None
    if first == mbus.START:
        total = mbus.frame_length(buf, start)
        if total is None or isinstance(total, bool):
            return total
        assert isinstance(total, int)
        end = start + total
        return (Kind.MBUS, end, None) if end <= len(buf) else None
    if first == 0x2F:  # '/'
        return _dsmr_extent(buf, start, final)
    extent = bare_apdu_extent(buf, start)
    if extent is None or isinstance(extent, bool):
        return extent
    assert isinstance(extent, int)
    if extent - start > MAX_BARE_APDU:
        return False
    return (Kind.APDU, extent, None) if extent <= len(buf) else None


def _dsmr_extent(buf: bytes | bytearray, start: int, final: bool) -> Probe | bool | None:
    ident = DSMR_IDENT.match(buf, start)
    if ident is None:
        return None if DSMR_IDENT_PREFIX.match(buf, start) and not final else False
    body = ident.end()
    if body < len(buf) and 0 < buf[body] <= cipher.MAX_SYSTEM_TITLE:
        # Not a text line: a system-title length, so the body is encrypted (ident line in clear).
        extent = cipher.header_extent(buf, body - 1)  # measures as if the DB tag stood before it
        if extent is None:
            return None if not final else False
        if isinstance(extent, bool):
            return False
        assert isinstance(extent, int)
        if extent > len(buf):
            return None if not final else False
        return Kind.P1_CIPHERED, extent, None
    limit = min(len(buf), start + MAX_DSMR_TELEGRAM)
    # The closing `!` starts a line of its own; a `!` elsewhere (line noise) does not end a telegram.
    bang = buf.find(b"\n!", start, limit)
    until = bang if bang >= 0 else limit
    cut = DSMR_NEXT_IDENT.search(buf, start, until)
    if cut is not None:
        # A new telegram began before this one ended: this one was cut off on the line.
        return Kind.DSMR, cut.start() + 1, None
    cut = DSMR_CUT_IDENT.search(buf, start + 1, until)
    if cut is not None:
        return Kind.DSMR, cut.start(), None
    while bang >= 0:
        end = _dsmr_end(buf, bang + 1, final)
        if end is None:
            return None
        if end:
            return Kind.DSMR, end, None
        bang = buf.find(b"\n!", bang + 2, limit)
    if limit - start >= MAX_DSMR_TELEGRAM:
        return False
    return None


def _dsmr_end(buf: bytes | bytearray, bang: int, final: bool) -> int | None:
    """End of the `!CRC` line at `bang`; None while it may still be arriving, 0 if this is no end."""
    found = DSMR_END.match(buf, bang)
    if found is not None:
        return found.end()
    size = len(buf)
    # Four CRC digits end the telegram even without a line end (some meters and captures omit it);
    # look two bytes further first so that a line end that follows is included.
    if DSMR_CRC4.match(buf, bang) is not None and (size >= bang + 7 or final):
        return bang + 5
    if final:
        # Input ended inside the end line: `!` or a partial CRC could be a cut-off, so not an end.
        return 0
    return None if size - bang <= 7 else 0


def is_strong_start(buf: bytes | bytearray, start: int) -> bool:
    """True if a strong candidate whose header already checks out starts at `start` (its body may
    still be incomplete)."""
    first = buf[start]
    if first == hdlc.FLAG:
        return isinstance(hdlc.parse_header(buf, start), hdlc.HdlcHeader)
    if first == mbus.START:
        length = mbus.frame_length(buf, start)
        return isinstance(length, int) and not isinstance(length, bool)
    if first == 0x2F:
        return DSMR_IDENT.match(buf, start) is not None
    return False
