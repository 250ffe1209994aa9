"""amsd's own frame encoder: A-XDR data, DLMS APDUs, ciphering, HDLC, GBT, M-Bus and DSMR telegrams.

Everything here is a pure function (bytes out) so that tests and the meter simulator can build any
frame a meter sends without borrowing captured data. It is written independently of the decoder, so
a round trip through the decoder checks two implementations against each other. The only shared code
is `amsd.decoder.crc` (CRC-16/X.25 for HDLC, CRC-16/ARC for DSMR), which the tests pin to the
published check values.

Wire facts used here (IEC 62056-46/-53/-5-3, EN 13757-2, DSMR 5.0.2):
- A-XDR: one tag byte, then a BER length for variable-size types, big-endian fixed-size integers.
- HDLC type 3: `7E | A0xx | dst | src | ctrl | HCS | info | FCS | 7E`, CRCs little endian, no byte
  stuffing on HAN ports (0x7E may occur inside the frame).
- M-Bus long frame: `68 L L 68 | C A CI STSAP DTSAP payload | CS 16`.
- General-glo-ciphering: `DB | 08 system title | len | SC | IC | ciphertext | tag(12)`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date as date_type
from datetime import datetime
from datetime import time as time_type
from enum import IntEnum
from typing import Final, Literal, TypeAlias

from amsd.decoder.crc import crc16_arc, crc16_x25

__all__ = [
    "Data",
    "DataType",
    "HeaderStyle",
    "array",
    "bcd",
    "ber_length",
    "bit_string",
    "boolean",
    "cosem_date",
    "cosem_datetime",
    "cosem_time",
    "crc16_arc",
    "data_notification",
    "date",
    "date_time",
    "dsmr_hex_id",
    "dsmr_number",
    "dsmr_telegram",
    "dsmr_timestamp",
    "encode",
    "enum",
    "float32",
    "float64",
    "gbt_blocks",
    "glo_cipher",
    "hdlc_frame",
    "hdlc_frames",
    "int8",
    "int16",
    "int32",
    "int64",
    "llc",
    "mbus_checksum",
    "mbus_frame",
    "mbus_frames",
    "null",
    "obis_code",
    "octet_string",
    "scaled",
    "structure",
    "time",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "utf8_string",
    "visible_string",
]

# ---------------------------------------------------------------------------------------- A-XDR


class DataType(IntEnum):
    """DLMS `Data` CHOICE tags (IEC 62056-6-2)."""

    NULL = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    INT32 = 5
    UINT32 = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    BCD = 13
    INT8 = 15
    INT16 = 16
    UINT8 = 17
    UINT16 = 18
    INT64 = 20
    UINT64 = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27


# Fixed-size integer types: struct format (big endian) and inclusive range.
_INTEGER_FORMATS: Final[dict[DataType, tuple[str, int, int]]] = {
    DataType.INT8: (">b", -(2**7), 2**7 - 1),
    DataType.UINT8: (">B", 0, 2**8 - 1),
    DataType.INT16: (">h", -(2**15), 2**15 - 1),
    DataType.UINT16: (">H", 0, 2**16 - 1),
    DataType.INT32: (">i", -(2**31), 2**31 - 1),
    DataType.UINT32: (">I", 0, 2**32 - 1),
    DataType.INT64: (">q", -(2**63), 2**63 - 1),
    DataType.UINT64: (">Q", 0, 2**64 - 1),
    DataType.ENUM: (">B", 0, 2**8 - 1),
}

DataValue: TypeAlias = "bool | int | float | bytes | str | tuple[Data, ...] | None"


@dataclass(frozen=True, slots=True)
class Data:
    """One typed DLMS value. Build it with the constructors below (`uint32(1247)`, `structure(...)`).

    `value` holds: None (null), bool, int (integers, enum, bcd), float, bytes (octet-string, the
    12/5/4 wire bytes of date-time/date/time, the packed bits of a bit-string), str (visible and
    utf8 strings), or a tuple of `Data` (array, structure). `bits` is the bit count of a bit-string.
    """

    type: DataType
    value: DataValue
    bits: int = 0

    def encode(self) -> bytes:
        return encode(self)


def null() -> Data:
    return Data(DataType.NULL, None)


def array(*items: Data) -> Data:
    """A homogeneous SEQUENCE OF (the decoder does not check homogeneity, neither do we)."""
    return Data(DataType.ARRAY, tuple(items))


def structure(*items: Data) -> Data:
    return Data(DataType.STRUCTURE, tuple(items))


def boolean(value: bool) -> Data:
    return Data(DataType.BOOLEAN, bool(value))


def bit_string(bits: str) -> Data:
    """A bit-string from a text of '0'/'1' characters, first character = most significant bit."""
    if any(c not in "01" for c in bits):
        raise ValueError("bit-string text must contain only '0' and '1'")
    count = len(bits)
    padded = bits.ljust(-(-count // 8) * 8, "0")
    packed = int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""
    return Data(DataType.BIT_STRING, packed, count)


def _integer(data_type: DataType, value: int) -> Data:
    _, low, high = _INTEGER_FORMATS[data_type]
    if not low <= value <= high:
        raise ValueError(f"{data_type.name.lower()} out of range: {value}")
    return Data(data_type, int(value))


def int8(value: int) -> Data:
    return _integer(DataType.INT8, value)


def int16(value: int) -> Data:
    return _integer(DataType.INT16, value)


def int32(value: int) -> Data:
    return _integer(DataType.INT32, value)


def int64(value: int) -> Data:
    return _integer(DataType.INT64, value)


def uint8(value: int) -> Data:
    return _integer(DataType.UINT8, value)


def uint16(value: int) -> Data:
    return _integer(DataType.UINT16, value)


def uint32(value: int) -> Data:
    return _integer(DataType.UINT32, value)


def uint64(value: int) -> Data:
    return _integer(DataType.UINT64, value)


def enum(value: int) -> Data:
    return _integer(DataType.ENUM, value)


def bcd(value: int) -> Data:
    """One BCD byte (two decimal digits, 0..99)."""
    if not 0 <= value <= 99:
        raise ValueError(f"bcd out of range: {value}")
    return Data(DataType.BCD, value)


def float32(value: float) -> Data:
    return Data(DataType.FLOAT32, float(value))


def float64(value: float) -> Data:
    return Data(DataType.FLOAT64, float(value))


def octet_string(value: bytes) -> Data:
    return Data(DataType.OCTET_STRING, bytes(value))


def visible_string(value: str) -> Data:
    if not value.isascii():
        raise ValueError("visible-string must be ASCII")
    return Data(DataType.VISIBLE_STRING, value)


def utf8_string(value: str) -> Data:
    return Data(DataType.UTF8_STRING, value)


def date_time(
    value: datetime | bytes,
    *,
    deviation: int | Literal["auto", "zero"] = "auto",
    clock_status: int | None = None,
    hundredths: bool = True,
) -> Data:
    """Typed date-time (tag 0x19, 12 bytes, no length). Options as for `cosem_datetime`."""
    if isinstance(value, bytes):
        raw = value
    else:
        raw = cosem_datetime(value, deviation=deviation, clock_status=clock_status, hundredths=hundredths)
    if len(raw) != 12:
        raise ValueError("date-time must be 12 bytes")
    return Data(DataType.DATE_TIME, raw)


def date(value: date_type | bytes) -> Data:
    raw = value if isinstance(value, bytes) else cosem_date(value)
    if len(raw) != 5:
        raise ValueError("date must be 5 bytes")
    return Data(DataType.DATE, raw)


def time(value: time_type | bytes) -> Data:
    raw = value if isinstance(value, bytes) else cosem_time(value)
    if len(raw) != 4:
        raise ValueError("time must be 4 bytes")
    return Data(DataType.TIME, raw)


def ber_length(length: int) -> bytes:
    """BER definite length: short form below 0x80, else 0x81..0x84 followed by big-endian bytes."""
    if length < 0:
        raise ValueError("negative length")
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    if size > 4:
        raise ValueError("length too large for BER encoding")
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def encode(data: Data) -> bytes:
    """A-XDR encoding of `data` (tag + content)."""
    out = bytearray()
    _encode_into(out, data)
    return bytes(out)


def _encode_into(out: bytearray, data: Data) -> None:
    kind = data.type
    value = data.value
    out.append(kind)
    if kind in _INTEGER_FORMATS:
        assert isinstance(value, int)
        out += struct.pack(_INTEGER_FORMATS[kind][0], value)
    elif kind is DataType.ARRAY or kind is DataType.STRUCTURE:
        assert isinstance(value, tuple)
        out += ber_length(len(value))
        for item in value:
            _encode_into(out, item)
    elif kind is DataType.OCTET_STRING:
        assert isinstance(value, bytes)
        out += ber_length(len(value)) + value
    elif kind is DataType.VISIBLE_STRING:
        assert isinstance(value, str)
        raw = value.encode("ascii")
        out += ber_length(len(raw)) + raw
    elif kind is DataType.UTF8_STRING:
        assert isinstance(value, str)
        raw = value.encode("utf-8")
        out += ber_length(len(raw)) + raw
    elif kind is DataType.NULL:
        pass
    elif kind is DataType.BOOLEAN:
        out.append(1 if value else 0)
    elif kind is DataType.BIT_STRING:
        assert isinstance(value, bytes)
        out += ber_length(data.bits) + value
    elif kind is DataType.BCD:
        assert isinstance(value, int)
        out.append(((value // 10) << 4) | (value % 10))
    elif kind is DataType.FLOAT32:
        assert isinstance(value, float)
        out += struct.pack(">f", value)
    elif kind is DataType.FLOAT64:
        assert isinstance(value, float)
        out += struct.pack(">d", value)
    elif kind in (DataType.DATE_TIME, DataType.DATE, DataType.TIME):
        assert isinstance(value, bytes)
        out += value  # fixed size, no length byte
    else:  # pragma: no cover - every DataType is handled above
        raise ValueError(f"cannot encode {kind!r}")


def obis_code(text: str) -> bytes:
    """`"1-0:1.7.0.255"` -> 6 bytes. Five-group codes get F = 255."""
    try:
        ab, cdef = text.split(":")
        a, b = ab.split("-")
        rest = cdef.split(".")
        if len(rest) == 3:
            rest.append("255")
        groups = [int(a), int(b), *(int(x) for x in rest)]
    except ValueError:
        raise ValueError(f"not an OBIS code: {text!r}") from None
    if len(groups) != 6 or not all(0 <= g <= 255 for g in groups):
        raise ValueError(f"not an OBIS code: {text!r}")
    return bytes(groups)


# ---------------------------------------------------------------------------------- COSEM clock

DEVIATION_UNSPECIFIED: Final = 0x8000
CLOCK_STATUS_DST: Final = 0x80


def cosem_datetime(
    moment: datetime,
    *,
    deviation: int | Literal["auto", "zero"] = "auto",
    clock_status: int | None = None,
    hundredths: bool = True,
) -> bytes:
    """The 12-byte COSEM date-time octet string.

    `deviation="auto"`: minutes from local time to UTC (the negated UTC offset) for an aware
    datetime, 0x8000 (unspecified: local time) for a naive one. `"zero"` forces 0 like Norwegian
    Aidon meters, whose clock is local although they claim UTC. An int is used as given.
    `clock_status=None` sets the daylight-saving bit from an aware datetime's dst(), else 0.
    `hundredths=False` sends 0xFF (not specified), as many meters do.
    """
    if deviation == "auto":
        offset = moment.utcoffset()
        dev = DEVIATION_UNSPECIFIED if offset is None else -int(offset.total_seconds() // 60)
    elif deviation == "zero":
        dev = 0
    else:
        dev = deviation
    if clock_status is None:
        dst = moment.dst() if moment.tzinfo is not None else None
        clock_status = CLOCK_STATUS_DST if dst else 0x00
    hund = moment.microsecond // 10_000 if hundredths else 0xFF
    return struct.pack(
        ">HBBBBBBBhB" if dev != DEVIATION_UNSPECIFIED else ">HBBBBBBBHB",
        moment.year,
        moment.month,
        moment.day,
        moment.isoweekday(),  # DLMS: Monday = 1 ... Sunday = 7
        moment.hour,
        moment.minute,
        moment.second,
        hund,
        dev,
        clock_status,
    )


def cosem_date(day: date_type) -> bytes:
    return struct.pack(">HBBB", day.year, day.month, day.day, day.isoweekday())


def cosem_time(moment: time_type) -> bytes:
    return bytes((moment.hour, moment.minute, moment.second, moment.microsecond // 10_000))


# ---------------------------------------------------------------------------------------- APDUs

DATA_NOTIFICATION: Final = 0x0F
LLC_HEADER: Final = b"\xe6\xe7\x00"

HeaderStyle: TypeAlias = Literal["tagged", "untagged", "none", "typed"]


def data_notification(
    body: Data | bytes,
    *,
    invoke_id: int = 0,
    clock: bytes | None = None,
    header: HeaderStyle = "untagged",
) -> bytes:
    """`0F | long-invoke-id-and-priority(4) | date-time | notification-body`.

    `clock` is a 12-byte COSEM date-time (see `cosem_datetime`) or None. Header styles seen in the
    field: "untagged" `0C <12>` (length, then the octets: the xDLMS form; Kamstrup), "tagged"
    `09 0C <12>` (Kaifa), "typed" `19 <12>`, "none" `00` (Aidon). A missing clock always gives `00`.
    """
    head = bytes((DATA_NOTIFICATION,)) + (invoke_id & 0xFFFFFFFF).to_bytes(4, "big")
    if clock is None or header == "none":
        stamp = b"\x00"
    else:
        if len(clock) != 12:
            raise ValueError("clock must be a 12-byte COSEM date-time")
        stamp = {"untagged": b"\x0c", "tagged": b"\x09\x0c", "typed": b"\x19"}[header] + clock
    return head + stamp + (body if isinstance(body, bytes) else encode(body))


def llc(apdu: bytes) -> bytes:
    """Prefix the LLC header `E6 E7 00` (destination LSAP, source LSAP response, quality)."""
    return LLC_HEADER + apdu


# ---------------------------------------------------------------------------- general block transfer

GBT_TAG: Final = 0xE0
GBT_LAST_BLOCK: Final = 0x80
GBT_STREAMING: Final = 0x40


def gbt_blocks(
    apdu: bytes,
    block_size: int,
    *,
    first_block_number: int = 1,
    streaming: bool = True,
    window: int = 0,
) -> list[bytes]:
    """Split an APDU into General Block Transfer blocks, one per link-layer frame.

    Each block is `E0 | control | block number(2) | acknowledged block(2) | BER length | data`;
    control = last-block bit 0x80 | streaming bit 0x40 | window (6 bits).
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    if not 0 <= window <= 0x3F:
        raise ValueError("window must fit in 6 bits")
    chunks = [apdu[i : i + block_size] for i in range(0, len(apdu), block_size)] or [b""]
    blocks = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        control = (GBT_LAST_BLOCK if last else 0) | (GBT_STREAMING if streaming else 0) | window
        number = (first_block_number + index) & 0xFFFF
        blocks.append(
            bytes((GBT_TAG, control)) + struct.pack(">HH", number, 0) + ber_length(len(chunk)) + chunk
        )
    return blocks


# ---------------------------------------------------------------------------------- ciphering

GLO_CIPHER_TAG: Final = 0xDB
SC_AUTHENTICATION: Final = 0x10
SC_ENCRYPTION: Final = 0x20
TAG_LENGTH: Final = 12


def glo_cipher(
    apdu: bytes,
    *,
    system_title: bytes,
    invocation_counter: int,
    encryption_key: bytes,
    authentication_key: bytes | None = None,
    security_control: int = 0x30,
) -> bytes:
    """Wrap an APDU in general-glo-ciphering (DLMS security suite 0, AES-128-GCM).

    IV = system title (8) || invocation counter (4). With the authentication bit (0x10) the 12-byte
    GCM tag is appended, with AAD = SC || AK (and the plaintext too when SC = 0x10, authentication
    only). With encryption only (0x20) there is no tag; the ciphertext is then AES-CTR starting at
    counter block IV || 00000002, exactly the GCM keystream.
    """
    if len(system_title) != 8:
        raise ValueError("system title must be 8 bytes")
    if len(encryption_key) != 16:
        raise ValueError("encryption key must be 16 bytes")
    if not 0 <= invocation_counter <= 0xFFFFFFFF:
        raise ValueError("invocation counter must fit in 32 bits")
    authenticated = bool(security_control & SC_AUTHENTICATION)
    encrypted = bool(security_control & SC_ENCRYPTION)
    if not (authenticated or encrypted):
        raise ValueError("security control must set authentication (0x10) and/or encryption (0x20)")
    if authenticated and (authentication_key is None or len(authentication_key) != 16):
        raise ValueError("authentication needs a 16-byte authentication key")
    # Imported here: only encrypting profiles need AES, and `cryptography` costs ~8 MB of RSS.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    counter = invocation_counter.to_bytes(4, "big")
    iv = system_title + counter
    sc = bytes((security_control,))
    if authenticated:
        assert authentication_key is not None
        encryptor = Cipher(algorithms.AES(encryption_key), modes.GCM(iv)).encryptor()
        if encrypted:
            encryptor.authenticate_additional_data(sc + authentication_key)
            body = encryptor.update(apdu) + encryptor.finalize()
        else:
            encryptor.authenticate_additional_data(sc + authentication_key + apdu)
            encryptor.finalize()
            body = apdu
        body += encryptor.tag[:TAG_LENGTH]
    else:
        ctr = Cipher(algorithms.AES(encryption_key), modes.CTR(iv + b"\x00\x00\x00\x02")).encryptor()
        body = ctr.update(apdu) + ctr.finalize()
    content = sc + counter + body
    return bytes((GLO_CIPHER_TAG, len(system_title))) + system_title + ber_length(len(content)) + content


# ---------------------------------------------------------------------------------------- HDLC

HDLC_FLAG: Final = b"\x7e"
HDLC_FORMAT_TYPE3: Final = 0xA000
HDLC_SEGMENTED: Final = 0x0800
HDLC_MAX_LENGTH: Final = 0x7FF
CONTROL_UI: Final = 0x13  # UI frame with the poll/final bit, what push meters send
CONTROL_I: Final = 0x10  # I-frame N(R)=0 N(S)=0 (Kaifa NO)


def _check_address(address: bytes, name: str) -> None:
    # Extended addressing: every byte but the last has bit 0 clear; the last has it set.
    if not 1 <= len(address) <= 4:
        raise ValueError(f"HDLC {name} address must be 1-4 bytes")
    if not address[-1] & 1 or any(b & 1 for b in address[:-1]):
        raise ValueError(f"HDLC {name} address: only its last byte may (and must) have bit 0 set")


def hdlc_frame(
    info: bytes,
    *,
    destination: bytes = b"\x41",
    source: bytes = b"\x08\x83",
    control: int = CONTROL_UI,
    segmented: bool = False,
) -> bytes:
    """One HDLC frame format type 3 with flags: `7E | A0xx | dst | src | ctrl | HCS | info | FCS | 7E`.

    Addresses are given in wire form (1-4 bytes). The length counts the bytes between the flags.
    HCS covers format..control, FCS format..info; both CRC-16/X.25, least significant byte first.
    A frame without information has only the FCS.
    """
    _check_address(destination, "destination")
    _check_address(source, "source")
    header_size = 2 + len(destination) + len(source) + 1
    length = header_size + (2 + len(info) if info else 0) + 2
    if length > HDLC_MAX_LENGTH:
        raise ValueError(f"HDLC frame too long ({length} > {HDLC_MAX_LENGTH}); use hdlc_frames()")
    fmt = HDLC_FORMAT_TYPE3 | (HDLC_SEGMENTED if segmented else 0) | length
    header = fmt.to_bytes(2, "big") + destination + source + bytes((control,))
    # HCS only when an information field follows; otherwise the FCS is the only checksum.
    body = header + crc16_x25(header).to_bytes(2, "little") + info if info else header
    return HDLC_FLAG + body + crc16_x25(body).to_bytes(2, "little") + HDLC_FLAG


def hdlc_frames(
    info: bytes,
    *,
    max_info: int = 200,
    destination: bytes = b"\x41",
    source: bytes = b"\x08\x83",
    control: int = CONTROL_UI,
    segment_control: int | None = None,
) -> list[bytes]:
    """Split an information field over segmented frames (segmentation bit on all but the last).

    `segment_control` is the control byte of the non-final segments (default: `control`).
    """
    if max_info <= 0:
        raise ValueError("max_info must be positive")
    chunks = [info[i : i + max_info] for i in range(0, len(info), max_info)] or [b""]
    frames = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        ctrl = control if last or segment_control is None else segment_control
        frames.append(
            hdlc_frame(chunk, destination=destination, source=source, control=ctrl, segmented=not last)
        )
    return frames


# --------------------------------------------------------------------------------------- M-Bus

MBUS_START: Final = 0x68
MBUS_STOP: Final = 0x16
MBUS_FINAL_SEGMENT: Final = 0x10
MBUS_MAX_PAYLOAD: Final = 250 - 5  # L (one byte) counts C, A, CI, STSAP, DTSAP and the payload


def mbus_checksum(body: bytes) -> int:
    """8-bit arithmetic sum of C through the last payload byte."""
    return sum(body) & 0xFF


def mbus_frame(
    payload: bytes,
    *,
    control: int = 0x53,
    address: int = 0xFF,
    ci: int = 0x10,
    stsap: int = 0x01,
    dtsap: int = 0x67,
) -> bytes:
    """One wired M-Bus long frame `68 L L 68 | C A CI STSAP DTSAP payload | CS 16`."""
    body = bytes((control, address, ci, stsap, dtsap)) + payload
    if len(body) > 255:
        raise ValueError("M-Bus frame body longer than 255 bytes; use mbus_frames()")
    size = len(body)
    return bytes((MBUS_START, size, size, MBUS_START)) + body + bytes((mbus_checksum(body), MBUS_STOP))


def mbus_frames(
    apdu: bytes,
    *,
    max_payload: int = MBUS_MAX_PAYLOAD,
    control: int = 0x53,
    address: int = 0xFF,
    stsap: int = 0x01,
    dtsap: int = 0x67,
) -> list[bytes]:
    """Split an APDU over long frames: CI low nibble = sequence number, bit 0x10 = final segment."""
    if not 0 < max_payload <= 250:
        raise ValueError("max_payload must be 1..250")
    chunks = [apdu[i : i + max_payload] for i in range(0, len(apdu), max_payload)] or [b""]
    if len(chunks) > 16:
        raise ValueError("APDU needs more than 16 M-Bus segments")
    return [
        mbus_frame(
            chunk,
            control=control,
            address=address,
            ci=index | (MBUS_FINAL_SEGMENT if index == len(chunks) - 1 else 0),
            stsap=stsap,
            dtsap=dtsap,
        )
        for index, chunk in enumerate(chunks)
    ]


# ---------------------------------------------------------------------------------------- DSMR


def dsmr_telegram(
    ident: str,
    lines: Iterable[str],
    *,
    line_end: str = "\r\n",
    crc: bool = True,
) -> bytes:
    """`/ident`, an empty line, the data lines, then `!` and the CRC-16/ARC (4 uppercase hex digits)
    computed over `/` through `!` inclusive. `crc=False` ends with `!` alone (Iskra SI style).
    `line_end="\\n"` gives LF-only telegrams. Text is latin-1 like the P1 port.
    """
    text = "/" + ident + line_end + line_end + "".join(line + line_end for line in lines) + "!"
    raw = text.encode("latin-1")
    checksum = f"{crc16_arc(raw):04X}".encode() if crc else b""
    return raw + checksum + line_end.encode("latin-1")


def dsmr_timestamp(moment: datetime) -> str:
    """`YYMMDDhhmmssX`: local wall clock and X = S (summer/DST) or W (standard time)."""
    dst = moment.dst() if moment.tzinfo is not None else None
    return moment.strftime("%y%m%d%H%M%S") + ("S" if dst else "W")


def dsmr_number(value: float, digits: int, decimals: int) -> str:
    """Zero-padded fixed-point field as DSMR writes it: `dsmr_number(1.5, 6, 3)` -> `"000001.500"`."""
    if decimals:
        return f"{value:0{digits + decimals + 1}.{decimals}f}"
    return f"{round(value):0{digits}d}"


def dsmr_hex_id(text: str) -> str:
    """DSMR 4/5 equipment identifiers are sent as the hex of their ASCII characters."""
    return text.encode("ascii").hex().upper()


# ------------------------------------------------------------------------------------- helpers


def scaled(raw: int, scaler: int, divisor: int = 1) -> int | float:
    """The exact decimal `raw * 10**scaler / divisor` as the nearest float (or int when integral).

    Divides by an exact power of ten instead of multiplying by 0.01 so the result is the float
    closest to the decimal value (no 0.30000000000000004 noise). `divisor` must be a power of ten.
    """
    exponent = scaler - round(math.log10(divisor))
    if exponent >= 0:
        return int(raw * 10**exponent)
    return raw / int(10 ** (-exponent))
