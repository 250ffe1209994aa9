"""Typed events produced by the sans-IO decoder.

Everything here is plain data: no I/O, no clock reads. A `Reading` is one decoded message (a DLMS
data-notification or a DSMR telegram); an `UndecodedFrame` is anything that could not be turned into
a reading, always with the raw bytes so that users can publish and report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, NamedTuple, TypeAlias

# A decoded value: number, string, ISO timestamp string, or (DSMR lines with several values) a list.
Scalar: TypeAlias = int | float | str | None
ValueData: TypeAlias = Scalar | list[Scalar]

Layer: TypeAlias = Literal["stream", "hdlc", "mbus", "gbt", "cipher", "apdu", "dsmr"]

# Stable error codes (tools depend on the first two).
NO_KEY: Final = "no_key"
WRONG_KEY: Final = "wrong_key"
TRUNCATED: Final = "truncated"


class Value(NamedTuple):
    """One OBIS value in canonical units (W, var, VA, kWh, kvarh, V, A, Hz, m3, GJ) or unit-less.

    Immutable (decoders share instances between readings); a NamedTuple because it is built for every
    value of every frame and constructs several times faster than a frozen dataclass."""

    value: ValueData
    unit: str | None = None


@dataclass(slots=True)
class Reading:
    """One decoded message from a meter.

    `values` is keyed by six-group OBIS codes (`A-B:C.D.E.F`, A and B as sent).
    `timestamp` is the meter's clock for this message: aware when the meter gave an offset, naive
    (local wall-clock) otherwise, None when the message carried no time.
    """

    values: dict[str, Value]
    meter_id: str | None = None
    timestamp: datetime | None = None
    model: str | None = None
    list: str | None = None
    manufacturer: str | None = None
    protocol: Literal["dlms", "dsmr"] = "dlms"
    system_title: str | None = None
    invocation_counter: int | None = None
    # DSMR only: whether a CRC line was present (None for DLMS).
    crc_present: bool | None = None
    # The wire bytes this reading was decoded from (all frames/segments, in order).
    raw: bytes = b""

    event: Literal["reading"] = field(default="reading", init=False)


@dataclass(slots=True)
class UndecodedFrame:
    """Bytes that did not yield a reading: noise, a bad CRC, a missing or wrong key, an unknown list."""

    layer: Layer
    error: str
    detail: str
    raw: bytes
    system_title: str | None = None
    invocation_counter: int | None = None

    event: Literal["undecoded"] = field(default="undecoded", init=False)


Event: TypeAlias = Reading | UndecodedFrame
