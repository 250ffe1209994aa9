"""DLMS data-notification APDU (tag 0x0F): header and body.

Layout: `0F | long-invoke-id-and-priority(4) | date-time | notification-body (one A-XDR Data)`.
The date-time comes in four shapes in the field (FIELD-NOTES "DLMS data-notification"):

- `09 0C <12>`: an octet-string with its tag (Kaifa, Sagemcom, L+G, ...; any length, only 12 is a time);
- `00`: absent (Aidon NO; per the standard this is OPTIONAL -> 0x00);
- `0C <12>`: the length without the octet-string tag (Kamstrup);
- `19 <12>`: a typed date-time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from amsd.decoder.axdr import ApduError, Data, cosem_datetime, decode_data

__all__ = ["DATA_NOTIFICATION", "ApduError", "Notification", "parse_data_notification"]

DATA_NOTIFICATION: Final = 0x0F
_HEADER_SIZE: Final = 5  # tag + invoke id


@dataclass(slots=True)
class Notification:
    invoke_id: int
    timestamp: datetime | None  # header date-time (None if absent or unspecified)
    body: Data  # decoded A-XDR data (see amsd.decoder.axdr)
    # The raw 12 header date-time bytes, so that a profile can re-read them (e.g. as naive time).
    timestamp_raw: bytes | None = None


def parse_data_notification(apdu: bytes, offsets: dict[int, list[int]] | None = None) -> Notification:
    """Parse a whole data-notification APDU. Raises ApduError; trailing bytes are an error too.

    `offsets` is passed to `decode_data` (element start offsets per container, for templates).
    """
    size = len(apdu)
    if not apdu or apdu[0] != DATA_NOTIFICATION:
        first = f"0x{apdu[0]:02X}" if apdu else "nothing"
        raise ApduError("unsupported_apdu", f"APDU tag {first} is not a data-notification (0x0F)")
    if size < _HEADER_SIZE + 1:
        raise ApduError("truncated_apdu", "data-notification shorter than its header")
    invoke_id = int.from_bytes(apdu[1:5], "big")
    pos = _HEADER_SIZE
    marker = apdu[pos]
    stamp: bytes | None = None
    if marker == 0x00:
        pos += 1
    elif marker == 0x09:
        if pos + 1 >= size:
            raise ApduError("truncated_apdu", "data-notification date-time cut off")
        length = apdu[pos + 1]
        if length >= 0x80:
            raise ApduError("bad_header", "data-notification date-time has an implausible length")
        end = pos + 2 + length
        if end > size:
            raise ApduError("truncated_apdu", "data-notification date-time cut off")
        if length == 12:
            stamp = apdu[pos + 2 : end]
        pos = end
    elif marker == 0x0C or marker == 0x19:
        end = pos + 13
        if end > size:
            raise ApduError("truncated_apdu", "data-notification date-time cut off")
        stamp = apdu[pos + 1 : end]
        pos = end
    else:
        raise ApduError("bad_header", f"data-notification date-time starts with 0x{marker:02X}")
    if pos >= size:
        raise ApduError("truncated_apdu", "data-notification has no body")
    if offsets is not None:
        offsets[0] = [pos]  # id 0 is never an object's id: the body's own start
    body, end = decode_data(apdu, pos, 0, offsets)
    if end != size:
        raise ApduError("trailing_bytes", f"{size - end} bytes after the notification body")
    return Notification(invoke_id, cosem_datetime(stamp) if stamp is not None else None, body, stamp)
