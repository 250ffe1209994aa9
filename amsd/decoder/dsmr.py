"""DSMR / IEC 62056-21 P1 telegrams (sans-IO): one complete telegram in, one event out.

A telegram is an ident line `/XXX5...`, data lines `OBIS(value*unit)(...)`, and an end line `!CRC`
where CRC is CRC-16/ARC over `/` through `!` as up to four hex digits (some meters send none).
Conventions follow the conformance corpus (shared/conformance/README.md, "Conventions"):

* OBIS keys get six groups (`1-0:1.8.1` and Q3D `1-0:1.8.1*255` become `1-0:1.8.1.255`).
* Numbers carry canonical units: kW/kvar/kVA become W/var/VA, Wh/varh become kWh/kvarh, the rest
  stays. Scaling moves the decimal point in the text, so results are exact (no 278.00000000000006).
  A number without a fractional part stays an int, so a field keeps one JSON type.
* Values without a unit stay literal strings (ids, tariffs and counters keep their leading zeros).
* `YYMMDDhhmmssX` timestamps become ISO 8601 with the offset given by the S/W flag (W = standard
  time, S = standard + 1 h), even where the flag contradicts the calendar: some Nordic meters send
  W all year. NES `YYYYMMDD hh:mm:ss` becomes a naive ISO time. Anything else stays literal.
* A line with several groups becomes a list whose unit is that of its last numeric element; a
  DSMR 2.2/3.0 continuation line `(...)` extends the preceding line; duplicate OBIS lines keep the
  first occurrence; lines that do not parse are skipped (the CRC, when sent, vouches for the rest).

Speed: a DSMR 5 meter repeats most lines every second (ids, tariff, counters, zero powers), so
decoded lines are memoised by their text. `Value` objects are therefore shared between readings
and must be treated as immutable, including list values. The lines that do change every second
(powers, voltages, currents, counters, the clock) nearly all have one of two shapes,
`OBIS(digits*unit)` and `OBIS(YYMMDDhhmmssX)`, which `_parse_line` decodes with a few string
operations and table lookups; every other line takes the general path. The meter id is
hex-decoded once per distinct id. (A compiled regex per line, or one `findall` over the body, was
measured slower: matching alone costs about a third of this whole path, and extracting the groups
as much again.)
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Final, TypeAlias

from amsd.decoder.crc import crc16_arc
from amsd.decoder.events import Reading, Scalar, UndecodedFrame, Value

__all__ = ["MAX_TELEGRAM", "parse_telegram"]

MAX_TELEGRAM: Final = 16384

# unit as sent -> (canonical unit, power of ten to apply)
_UNITS: Final[dict[str, tuple[str, int]]] = {
    "W": ("W", 0),
    "kW": ("W", 3),
    "var": ("var", 0),
    "kvar": ("var", 3),
    "VA": ("VA", 0),
    "kVA": ("VA", 3),
    "Wh": ("kWh", -3),
    "kWh": ("kWh", 0),
    "varh": ("kvarh", -3),
    "kvarh": ("kvarh", 0),
    "VAh": ("kVAh", -3),
    "kVAh": ("kVAh", 0),
    "V": ("V", 0),
    "A": ("A", 0),
    "Hz": ("Hz", 0),
    "m3": ("m3", 0),
    "GJ": ("GJ", 0),
    "s": ("s", 0),
}
# Meters disagree on case (`kVArh`, `kVAr`); no two units above differ only by case.
_UNITS_FOLDED: Final = {unit.lower(): canonical for unit, canonical in _UNITS.items()}

_LONGEST_NUMBER: Final = 40  # longer digit strings are not readings (and int() caps its digits)
_CRC_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")
_HEX_DIGITS: Final = frozenset("0123456789ABCDEFabcdef")
# Last valid day per month as two-digit text; Feb 29 is checked against the year separately.
_LAST_DAY: Final = {
    f"{month:02d}": f"{days:02d}"
    for month, days in enumerate((31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31), start=1)
}

# Where the meter id may be, in order of preference (Q3D meters use 0-0:96.1.255).
_METER_ID_KEYS: Final = ("0-0:96.1.1.255", "0-0:96.1.0.255", "0-0:96.1.255.255", "1-0:0.0.0.255")
_CLOCK_KEY: Final = "0-0:1.0.0.255"
_VERSION_KEY: Final = "1-3:0.2.8.255"

# Memo tables. Bounded: on overflow they are emptied, so noise cannot grow memory.
_CACHE_LIMIT: Final = 4096
_LineEntry: TypeAlias = tuple[str, Value] | None
_line_caches: dict[int, dict[str, _LineEntry]] = {}
_obis_cache: dict[str, str | None] = {}
_MISS: Final[_LineEntry] = ("", Value(None))
_unhex_cache: dict[str, str] = {}

# Fast-path tables: a unit as it ends a line (`kW)`, `kW)\r`) -> (canonical unit, power of ten), for
# units spelt exactly as in _UNITS; and a timestamp's flag as it ends a line -> summer time or not.
_UNIT_TAILS: Final = {f"{unit}){cr}": canonical for unit, canonical in _UNITS.items() for cr in ("", "\r")}
_FLAG_TAILS: Final = {"W)": False, "W)\r": False, "S)": True, "S)\r": True}
_SHIFT_BACK: Final = (1000, 100, 10, 1)  # kW-style text with n fraction digits: int(digits) * this[n]
# Value(value, unit) without the NamedTuple's Python-level __new__ (one frame less per line).
_new_value: Final = tuple.__new__


def parse_telegram(
    raw: bytes,
    *,
    standard_offset_minutes: int = 60,
    require_crc: bool = False,
    system_title: str | None = None,
    invocation_counter: int | None = None,
) -> Reading | UndecodedFrame:
    """Decode one telegram (`/` through the end of the `!` line); never raises.

    Leading whitespace and bytes after the `!` line (gateway trailers, padding) are ignored.
    `standard_offset_minutes` is the meter's UTC offset in standard (winter) time.
    """
    raw = bytes(raw)
    try:
        return _parse(raw, standard_offset_minutes, require_crc, system_title, invocation_counter)
    except Exception as exc:  # safety net: malformed input must become an event, never a crash
        return UndecodedFrame(
            "dsmr", "bad_telegram", f"unexpected {type(exc).__name__}", raw, system_title, invocation_counter
        )


def _parse(
    raw: bytes,
    standard_offset_minutes: int,
    require_crc: bool,
    system_title: str | None,
    invocation_counter: int | None,
) -> Reading | UndecodedFrame:
    def bad(error: str, detail: str) -> UndecodedFrame:
        return UndecodedFrame("dsmr", error, detail, raw, system_title, invocation_counter)

    if len(raw) > MAX_TELEGRAM:
        return bad("bad_telegram", f"telegram longer than {MAX_TELEGRAM} bytes")
    start = raw.find(b"/")
    if start < 0:
        return bad("bad_telegram", "no '/' ident line")
    if raw[:start].strip(b" \t\r\n\0"):
        return bad("bad_telegram", "bytes before the '/' ident line")
    ident_end = raw.find(b"\n", start)
    if ident_end < 0:
        return bad("bad_telegram", "ident line not terminated")
    ident = raw[start + 1 : ident_end].rstrip(b"\r").decode("latin-1")
    if len(ident) < 4 or not (ident[:3].isascii() and ident[:3].isalpha()):
        return bad("bad_telegram", "ident line does not start with a 3-letter manufacturer id")
    # The end line is the first line that starts with '!'; no data line starts with one.
    bang = raw.find(b"\n!", ident_end)
    if bang < 0:
        return bad("bad_telegram", "no '!' end line (truncated telegram)")
    bang += 1
    crc_line_end = raw.find(b"\n", bang)
    crc_field = raw[bang + 1 : crc_line_end if crc_line_end >= 0 else len(raw)].strip()
    if crc_field:
        if len(crc_field) > 4 or not _CRC_DIGITS.issuperset(crc_field):
            return bad("bad_telegram", "CRC field is not 1-4 hex digits")
        computed = crc16_arc(raw[start : bang + 1])
        if computed != int(crc_field, 16):
            return bad("crc_mismatch", f"CRC {computed:04X} computed, {crc_field.decode()} sent")
    elif require_crc:
        return bad("crc_missing", "telegram has no CRC and a CRC is required")

    values = _parse_lines(raw[ident_end + 1 : bang].decode("latin-1"), standard_offset_minutes)
    if not values:
        return bad("bad_telegram", "no OBIS data lines")

    version = values.get(_VERSION_KEY)
    if version is not None and isinstance(version.value, str) and version.value:
        digits = version.value
        list_name = f"DSMR {digits[0]}.{digits[1:]}" if len(digits) == 2 else f"DSMR {digits}"
    else:
        list_name = ident
    return Reading(
        values=values,
        meter_id=_meter_id(values),
        timestamp=_clock(values),
        model=ident,
        list=list_name,
        # Manufacturer FLAG ids are upper case; a lower-case third letter only signals fast reaction.
        manufacturer=ident[:3].upper(),
        protocol="dsmr",
        system_title=system_title,
        invocation_counter=invocation_counter,
        crc_present=bool(crc_field),
        raw=raw,
    )


def _parse_lines(body: str, standard_offset_minutes: int) -> dict[str, Value]:
    cache = _line_caches.get(standard_offset_minutes)
    if cache is None:
        if len(_line_caches) >= 8:
            _line_caches.clear()
        cache = _line_caches[standard_offset_minutes] = {}
    winter = _offset_suffix(standard_offset_minutes)
    summer = _offset_suffix(standard_offset_minutes + 60)
    values: dict[str, Value] = {}
    previous: str | None = None  # key of the line a continuation line extends
    for line in body.split("\n"):
        entry = cache.get(line, _MISS)
        if entry is _MISS:
            if line[:1] == "(":  # continuation line: meaningful only after its head, never cached
                if previous is not None:
                    end = line.rfind(")")
                    if end > 0 and not line[end + 1 :].strip():
                        values[previous] = _list_value(values[previous], line[1:end], winter, summer)
                continue
            entry = _parse_line(line, winter, summer)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[line] = entry
        if entry is None:
            previous = None
            continue
        key, value = entry
        if key in values:  # duplicate OBIS line: the first one wins
            previous = None
            continue
        values[key] = value
        previous = key
    return values


def _parse_line(line: str, winter: str, summer: str) -> _LineEntry:
    """`OBIS(group)(group)...` -> (six-group OBIS, Value), or None for anything else.

    Decodes `OBIS(digits[.digits]*unit)` (units that scale by 1 or 1000) and `OBIS(YYMMDDhhmmssX)`
    directly; every other line, and anything unusual in those two shapes, takes the general path.
    """
    obis, _, rest = line.partition("(")
    number, star, tail = rest.partition("*")
    value: Scalar
    if star:
        unit = _UNIT_TAILS.get(tail)
        if unit is None or len(number) > _LONGEST_NUMBER or not number.isascii():
            return _parse_line_general(line, winter, summer)
        whole, dot, fraction = number.partition(".")
        if not whole.isdigit() or (dot and not fraction.isdigit()):
            return _parse_line_general(line, winter, summer)
        canonical, power = unit
        if power == 0:
            value = float(number) if dot else int(whole)
        elif power == 3 and len(fraction) <= 3:
            value = int(whole + fraction) * _SHIFT_BACK[len(fraction)]
        elif power == -3 and not dot:
            # Wh/varh as integers (Austrian and Swiss P1). int / int is correctly rounded: the double
            # closest to the kWh value, as float() of the text with the point moved three digits.
            value = int(whole) / 1000
        else:  # kW-style with more than three fraction digits, Wh-style with a fraction: rare
            return _parse_line_general(line, winter, summer)
        unit_name: str | None = canonical
    elif 14 <= len(rest) <= 15:
        is_summer = _FLAG_TAILS.get(rest[12:])
        stamp = None if is_summer is None else _dsmr_time(rest, summer if is_summer else winter)
        if stamp is None:
            return _parse_line_general(line, winter, summer)
        value, unit_name = stamp, None
    else:
        # `OBIS(text)`: ids, tariffs, counters, empty values stay literal text. Anything with more
        # groups or brackets inside, or the 17-character NES time, takes the general path.
        close = rest.find(")")
        if close < 0 or close + 1 != len(rest) - (rest[-1:] == "\r") or "(" in rest or close == 17:
            return _parse_line_general(line, winter, summer)
        value, unit_name = rest[:close], None
    key = _obis_cache.get(obis, "")
    if key == "":
        key = _obis_key(obis)
    if key is None:
        return None
    return key, _new_value(Value, (value, unit_name))


def _parse_line_general(line: str, winter: str, summer: str) -> _LineEntry:
    """Any line shape; `_parse_line` gives the same result faster for the common ones."""
    open_at = line.find("(")
    if open_at <= 0:
        return None
    end = line.rfind(")")
    if end < open_at or line[end + 1 :].strip():
        return None
    obis = line[:open_at]
    key = _obis_cache.get(obis, "")
    if key == "":
        key = _obis_key(obis)
    if key is None:
        return None
    content = line[open_at + 1 : end]
    if ")(" in content:
        return key, _list_value(None, content, winter, summer)
    value, unit = _convert(content, winter, summer)
    return key, _new_value(Value, (value, unit))


def _list_value(head: Value | None, content: str, winter: str, summer: str) -> Value:
    """The groups of `content` as a list, appended to `head`'s value when extending a line."""
    if head is None:
        items: list[Scalar] = []
        unit = None
    else:
        items = list(head.value) if isinstance(head.value, list) else [head.value]
        unit = head.unit
    for group in content.split(")("):
        value, group_unit = _convert(group, winter, summer)
        items.append(value)
        if group_unit is not None:
            unit = group_unit
    return _new_value(Value, (items, unit))


def _convert(text: str, winter: str, summer: str) -> tuple[Scalar, str | None]:
    """One group -> (value, canonical unit if the value is a number)."""
    star = text.find("*")
    if star >= 0:
        unit = text[star + 1 :]
        canonical = _UNITS.get(unit) or _UNITS_FOLDED.get(unit.lower())
        if canonical is None:
            if not unit.isprintable() or not unit.strip():
                return text, None
            canonical = (unit, 0)  # unknown unit: the number as sent, with its unit
        number = _scaled_number(text[:star], canonical[1])
        if number is None:
            return text, None
        return number, canonical[0]
    if len(text) == 13:
        flag = text[12]
        if flag == "W" or flag == "S":
            iso = _dsmr_time(text, winter if flag == "W" else summer)
            if iso is not None:
                return iso, None
    elif len(text) == 17:
        iso = _nes_time(text)
        if iso is not None:
            return iso, None
    return text, None


def _scaled_number(text: str, power: int) -> int | float | None:
    """Decimal text times 10**power (power in -3, 0, 3), exact: the decimal point moves in the text.

    No fractional part left -> int; otherwise a float parsed from the shifted text (the closest
    double). None if the text is not a plain decimal number.
    """
    if len(text) > _LONGEST_NUMBER:
        return None
    number = text
    sign = ""
    if text[:1] == "-" or text[:1] == "+":
        sign, text = text[0], text[1:]
    whole, dot, fraction = text.partition(".")
    digits = whole + fraction
    if not (digits.isdigit() and digits.isascii()):
        return None
    if power == 0:
        return float(number) if dot else int(number)
    if power > 0:
        if len(fraction) <= power:
            return int(sign + whole + fraction.ljust(power, "0"))
        return float(f"{sign}{whole}{fraction[:power]}.{fraction[power:]}")
    whole = whole.rjust(1 - power, "0")
    return float(f"{sign}{whole[:power]}.{whole[power:]}{fraction}")


def _dsmr_time(text: str, suffix: str) -> str | None:
    """`YYMMDDhhmmss` + flag (the caller picked the offset suffix) -> ISO 8601, None if invalid.

    Reads only the first 12 characters.
    """
    digits = text[:12]
    if not (digits.isdigit() and digits.isascii()):
        return None
    yy, month, day = text[0:2], text[2:4], text[4:6]
    hour, minute, second = text[6:8], text[8:10], text[10:12]
    # Two-digit text compares like the numbers it holds.
    if not ("01" <= month <= "12" and "01" <= day <= _LAST_DAY[month]):
        return None
    if hour > "23" or minute > "59" or second > "59":
        return None
    # POSIX %y pivot: 69-99 are 19xx (meters send 700101... for "never").
    century = "19" if yy >= "69" else "20"
    if month == "02" and day == "29" and not _is_leap(int(century + yy)):
        return None
    return f"{century}{yy}-{month}-{day}T{hour}:{minute}:{second}{suffix}"


def _nes_time(text: str) -> str | None:
    """NES `YYYYMMDD hh:mm:ss` (no DST flag) -> naive ISO 8601, None if invalid."""
    if text[8] != " " or text[11] != ":" or text[14] != ":":
        return None
    iso = _dsmr_time(text[2:8] + text[9:11] + text[12:14] + text[15:17] + "W", "")
    if iso is None or iso[:2] != text[:2]:
        return None
    return iso


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@lru_cache(maxsize=16)
def _offset_suffix(offset_minutes: int) -> str:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _obis_key(text: str) -> str | None:
    """Six-group OBIS key (`A-B:C.D.E.F`) for a line's key text, or None. Memoised: keys repeat."""
    key = _obis_cache.get(text, "")
    if key != "":
        return key
    key = _normalise_obis(text.strip())
    if len(_obis_cache) >= _CACHE_LIMIT:
        _obis_cache.clear()
    _obis_cache[text] = key
    return key


def _normalise_obis(text: str) -> str | None:
    a, dash, rest = text.partition("-")
    b, colon, rest = rest.partition(":")
    if not (dash and colon):
        return None
    rest = rest.replace("*", ".", 1)  # Q3D writes the F group as `*255`
    groups = [a, b, *rest.split(".")]
    if len(groups) == 5:
        groups.append("255")
    if len(groups) != 6:
        return None
    numbers = []
    for group in groups:
        if not (0 < len(group) <= 3 and group.isdigit() and group.isascii()) or int(group) > 255:
            return None
        numbers.append(int(group))
    return "{}-{}:{}.{}.{}.{}".format(*numbers)


def _meter_id(values: dict[str, Value]) -> str | None:
    """The equipment id; DSMR 4/5 send it hex-encoded (`4B464D...` = "KFM..."), older meters plain."""
    for key in _METER_ID_KEYS:
        value = values.get(key)
        if value is not None and isinstance(value.value, str) and value.value:
            text = value.value
            meter_id = _unhex_cache.get(text)
            if meter_id is None:  # the id repeats in every telegram: decode it once
                meter_id = _unhex(text)
                if len(_unhex_cache) >= _CACHE_LIMIT:
                    _unhex_cache.clear()
                _unhex_cache[text] = meter_id
            return meter_id
    return None


def _unhex(text: str) -> str:
    """Hex-encoded printable ASCII decoded; anything else unchanged."""
    if len(text) % 2 or not _HEX_DIGITS.issuperset(text):
        return text
    decoded = bytes.fromhex(text)
    if not all(0x20 <= byte < 0x7F for byte in decoded):
        return text
    return decoded.decode("ascii")


def _clock(values: dict[str, Value]) -> datetime | None:
    """The meter clock (0-0:1.0.0): aware with an S/W flag, naive without one."""
    clock = values.get(_CLOCK_KEY)
    if clock is None:
        return None
    text = clock.value[0] if isinstance(clock.value, list) and clock.value else clock.value
    if not isinstance(text, str):
        return None
    if len(text) == 12:  # no S/W flag: the meter's wall clock
        text = _dsmr_time(text + "W", "") or ""
    if len(text) < 19 or text[4:5] != "-" or text[10:11] != "T":
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
