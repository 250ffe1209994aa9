"""OBIS codes and DLMS units (IEC 62056-6-1 / Blue Book).

An OBIS code is six bytes `A B C D E F`, written `A-B:C.D.E.F` in decimal with A and B kept as sent
(Kamstrup uses `1-1:`, Swiss pushes mix `1-0:` and `1-1:`; merging channels would be wrong).
"""

from __future__ import annotations

from enum import Enum
from typing import Final


class Quantity(Enum):
    """What an electricity OBIS code measures, from its C (quantity/phase) and D (processing) groups."""

    ACTIVE_POWER = "active_power"
    REACTIVE_POWER = "reactive_power"
    APPARENT_POWER = "apparent_power"
    ACTIVE_ENERGY = "active_energy"
    REACTIVE_ENERGY = "reactive_energy"
    APPARENT_ENERGY = "apparent_energy"
    CURRENT = "current"
    VOLTAGE = "voltage"
    POWER_FACTOR = "power_factor"
    FREQUENCY = "frequency"


_NAMES: dict[bytes, str] = {}


def obis_str(code: bytes) -> str:
    """`A-B:C.D.E.F` for a 6-byte code; cached because meters repeat the same few dozen codes."""
    name = _NAMES.get(code)
    if name is None:
        if len(code) != 6:
            raise ValueError("an OBIS code has 6 bytes")
        name = "%d-%d:%d.%d.%d.%d" % tuple(code)  # noqa: UP031 - fastest for six small ints
        if len(_NAMES) < 4096:  # hostile input must not grow the cache without bound
            _NAMES[bytes(code)] = name
    return name


def obis_bytes(text: str) -> bytes:
    """Inverse of `obis_str` (for tables and tests)."""
    ab, cdef = text.split(":")
    a, b = ab.split("-")
    return bytes([int(a), int(b), *(int(x) for x in cdef.split("."))])


# C groups of electricity (A=1), reduced to the phase-independent quantity 1..20: C 21-40 are L1,
# 41-60 L2, 61-80 L3 with the same meaning as C 1-20 (Blue Book, "value group C" for electricity).
_BASE_QUANTITY: Final[dict[int, str]] = {
    1: "active",
    2: "active",
    15: "active",
    16: "active",
    3: "reactive",
    4: "reactive",
    5: "reactive",
    6: "reactive",
    7: "reactive",
    8: "reactive",
    9: "apparent",
    10: "apparent",
    11: "current",
    12: "voltage",
    13: "power_factor",
    14: "frequency",
}
# D groups: 7 instantaneous, 4/5 current and last average, 6 maximum demand (all powers); 8 and 9
# time integrals (energies).
_POWER_D: Final = frozenset((4, 5, 6, 7))
_ENERGY_D: Final = frozenset((8, 9))


def _classify(c: int, d: int) -> Quantity | None:
    if c == 91:
        return Quantity.CURRENT if d in _POWER_D else None  # neutral current
    if 21 <= c <= 80:
        c = (c - 1) % 20 + 1
    base = _BASE_QUANTITY.get(c)
    if base is None:
        return None
    if base in ("active", "reactive", "apparent"):
        if d in _POWER_D:
            return Quantity(f"{base}_power")
        if d in _ENERGY_D:
            return Quantity(f"{base}_energy")
        return None
    return Quantity(base) if d in _POWER_D else None


_QUANTITIES: Final[dict[tuple[int, int], Quantity | None]] = {
    (c, d): _classify(c, d) for c in range(256) for d in range(16)
}


def quantity(code: bytes) -> Quantity | None:
    """The electrical quantity of an OBIS code, or None for anything else (ids, clocks, gas...)."""
    if code[0] != 1:
        return None
    return _QUANTITIES.get((code[2], code[3]))


def is_clock(code: bytes) -> bool:
    """`x-x:1.0.0.x` is the clock (Blue Book); Kamstrup sends it as 0-1:1.0.0.255."""
    return code[0] == 0 and code[2] == 1 and code[3] == 0 and code[4] == 0


# DLMS unit enum (Blue Book, class 3 scaler_unit) -> (canonical unit, extra power of ten to apply).
# Energies become kWh / kvarh / kVAh, heat GJ. 255 (count, dimensionless: power factor) gives "",
# as the conformance corpus writes it; 254 ("other unit") gives None, i.e. unknown.
UNITS: Final[dict[int, tuple[str | None, int]]] = {
    1: ("a", 0),
    2: ("mo", 0),
    3: ("wk", 0),
    4: ("d", 0),
    5: ("h", 0),
    6: ("min", 0),
    7: ("s", 0),
    8: ("°", 0),
    9: ("°C", 0),
    10: ("currency", 0),
    11: ("m", 0),
    12: ("m/s", 0),
    13: ("m3", 0),
    14: ("m3", 0),
    15: ("m3/h", 0),
    16: ("m3/h", 0),
    17: ("m3/d", 0),
    18: ("m3/d", 0),
    19: ("l", 0),
    20: ("kg", 0),
    21: ("N", 0),
    22: ("Nm", 0),
    23: ("Pa", 0),
    24: ("bar", 0),
    25: ("GJ", -9),
    26: ("J/h", 0),
    27: ("W", 0),
    28: ("VA", 0),
    29: ("var", 0),
    30: ("kWh", -3),
    31: ("kVAh", -3),
    32: ("kvarh", -3),
    33: ("A", 0),
    34: ("C", 0),
    35: ("V", 0),
    36: ("V/m", 0),
    37: ("F", 0),
    38: ("Ω", 0),
    39: ("Ωm2/m", 0),
    40: ("Wb", 0),
    41: ("T", 0),
    42: ("A/m", 0),
    43: ("H", 0),
    44: ("Hz", 0),
    45: ("1/(Wh)", 0),
    46: ("1/(varh)", 0),
    47: ("1/(VAh)", 0),
    48: ("V2h", 0),
    49: ("A2h", 0),
    50: ("kg/s", 0),
    51: ("S", 0),
    52: ("K", 0),
    53: ("1/(V2h)", 0),
    54: ("1/(A2h)", 0),
    55: ("1/m3", 0),
    56: ("%", 0),
    57: ("Ah", 0),
    60: ("Wh/m3", 0),
    61: ("J/m3", 0),
    62: ("mol%", 0),
    63: ("g/m3", 0),
    64: ("Pa s", 0),
    65: ("J/kg", 0),
    70: ("dBm", 0),
    71: ("dBμV", 0),
    72: ("dB", 0),
    254: (None, 0),
    255: ("", 0),
}
