"""DSMR / P1 telegram decoding and CRC-16/ARC, on telegrams built here (no corpus data)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsd.decoder import dsmr
from amsd.decoder.crc import crc16_arc
from amsd.decoder.dsmr import MAX_TELEGRAM, parse_telegram
from amsd.decoder.events import Reading, UndecodedFrame, Value

IDENT = "XYZ5\\2TEST-METER"


def crc_arc_bitwise(data: bytes) -> int:
    """Reference CRC-16/ARC, one bit at a time."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def build(
    *lines: str, ident: str = IDENT, eol: str = "\r\n", crc: str | None = "upper", blank: bool = True
) -> bytes:
    """A telegram with the given data lines; crc is "upper", "lower", "unpadded" or None (no CRC)."""
    text = "/" + ident + eol + (eol if blank else "") + "".join(line + eol for line in lines) + "!"
    body = text.encode("latin-1")
    value = crc16_arc(body)
    field = {"upper": f"{value:04X}", "lower": f"{value:04x}", "unpadded": f"{value:X}", None: ""}[crc]
    return body + field.encode() + eol.encode()


def reading(raw: bytes, **kwargs: object) -> Reading:
    event = parse_telegram(raw, **kwargs)  # type: ignore[arg-type]
    assert isinstance(event, Reading), f"{event.error}: {event.detail}"
    return event


def undecoded(raw: bytes, **kwargs: object) -> UndecodedFrame:
    event = parse_telegram(raw, **kwargs)  # type: ignore[arg-type]
    assert isinstance(event, UndecodedFrame), event
    assert event.layer == "dsmr"
    assert event.raw == raw
    return event


# ------------------------------------------------------------------------------------------ CRC
def test_crc16_arc_check_value() -> None:
    assert crc16_arc(b"123456789") == 0xBB3D
    assert crc16_arc(b"") == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_crc16_arc_matches_bitwise_reference(data: bytes) -> None:
    assert crc16_arc(data) == crc_arc_bitwise(data)
    assert crc16_arc(bytearray(data)) == crc16_arc(memoryview(data)) == crc16_arc(data)


def test_crc16_arc_long_input() -> None:
    data = bytes(range(256)) * 64 + b"tail"
    assert crc16_arc(data) == crc_arc_bitwise(data)


# -------------------------------------------------------------------------------------- framing
def test_valid_crc_gives_reading() -> None:
    raw = build("1-3:0.2.8(50)", "0-0:1.0.0(240102030405W)", "1-0:1.7.0(01.234*kW)")
    event = reading(raw)
    assert event.crc_present is True
    assert event.protocol == "dsmr"
    assert event.raw == raw
    assert event.values["1-0:1.7.0.255"] == Value(1234, "W")


@pytest.mark.parametrize("style", ["lower", "unpadded"])
def test_crc_lowercase_and_unpadded(style: str) -> None:
    # Vary a value until the CRC has a leading zero nibble, so that "unpadded" really drops a digit.
    for counter in range(5000):
        raw = build(f"0-0:96.7.21({counter:05d})", crc=style)
        if crc16_arc(raw[: raw.index(b"!") + 1]) < 0x1000:
            break
    event = reading(raw)
    assert event.crc_present is True
    assert event.values["0-0:96.7.21.255"] == Value(f"{counter:05d}")


def test_missing_crc_accepted_and_flagged() -> None:
    raw = build("1-0:1.8.0(000123.456*kWh)", crc=None)
    event = reading(raw)
    assert event.crc_present is False
    assert event.values["1-0:1.8.0.255"] == Value(123.456, "kWh")


def test_missing_crc_rejected_when_required() -> None:
    assert undecoded(build("1-0:1.8.0(000123.456*kWh)", crc=None), require_crc=True).error == "crc_missing"
    assert isinstance(parse_telegram(build("1-0:1.8.0(000123.456*kWh)"), require_crc=True), Reading)


def test_bad_crc_rejected() -> None:
    raw = build("1-0:1.7.0(01.234*kW)")
    wrong = raw.replace(b"01.234", b"01.235")
    event = undecoded(wrong)
    assert event.error == "crc_mismatch"


def test_malformed_crc_field() -> None:
    raw = build("1-0:1.7.0(01.234*kW)", crc=None).replace(b"!\r\n", b"!12G4\r\n")
    assert undecoded(raw).error == "bad_telegram"
    raw = build("1-0:1.7.0(01.234*kW)", crc=None).replace(b"!\r\n", b"!12345\r\n")
    assert undecoded(raw).error == "bad_telegram"


def test_lf_only_line_endings() -> None:
    event = reading(build("0-0:1.0.0(240102030405W)", "1-0:32.7.0(230.1*V)", eol="\n"))
    assert event.values["1-0:32.7.0.255"] == Value(230.1, "V")
    assert event.values["0-0:1.0.0.255"].value == "2024-01-02T03:04:05+01:00"


def test_end_of_input_right_after_crc() -> None:
    raw = build("1-0:32.7.0(230.1*V)")
    assert reading(raw.rstrip(b"\r\n")).values["1-0:32.7.0.255"] == Value(230.1, "V")


def test_leading_line_end_and_trailing_bytes_ignored() -> None:
    raw = b"\r\n" + build("1-0:32.7.0(230.1*V)") + b"  1234\r\n\xff\xff\x00\x00"
    event = reading(raw)
    assert event.values == {"1-0:32.7.0.255": Value(230.1, "V")}
    assert event.raw == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no telegram here",
        b"/XYZ5 ident only",
        b"/XYZ5\r\n\r\n1-0:1.7.0(01.234*kW)\r\n",  # no end line: truncated
        b"/12\r\n\r\n1-0:1.7.0(01.234*kW)\r\n!\r\n",  # ident without manufacturer letters
        b"junk/XYZ5\r\n\r\n1-0:1.7.0(01.234*kW)\r\n!\r\n",
        b"/XYZ5\r\n\r\nnothing useful\r\n!\r\n",  # no data lines
    ],
)
def test_structural_errors(raw: bytes) -> None:
    assert undecoded(raw).error == "bad_telegram"


def test_too_long() -> None:
    lines = [f"0-0:96.13.0({'41' * 100})"] * (MAX_TELEGRAM // 200)
    assert undecoded(build(*lines)).error == "bad_telegram"


def test_system_title_and_invocation_counter_passed_through() -> None:
    event = reading(build("1-0:1.7.0(01.234*kW)"), system_title="SAGY1234", invocation_counter=7)
    assert (event.system_title, event.invocation_counter) == ("SAGY1234", 7)
    bad = undecoded(build("1-0:1.7.0(01.234*kW)")[:-4] + b"0\r\n", system_title="X", invocation_counter=1)
    assert (bad.system_title, bad.invocation_counter) == ("X", 1)


# ------------------------------------------------------------------------------------- metadata
def test_ident_version_manufacturer() -> None:
    event = reading(build("1-3:0.2.8(50)", "1-0:1.7.0(00.100*kW)", ident="ISk5\\2MT382-1000"))
    assert event.model == "ISk5\\2MT382-1000"
    assert event.manufacturer == "ISK"
    assert event.list == "DSMR 5.0"
    event = reading(build("1-3:0.2.8(42)", "1-0:1.7.0(00.100*kW)"))
    assert event.list == "DSMR 4.2"
    assert reading(build("1-0:1.7.0(00.100*kW)", ident="KAM5")).list == "KAM5"


def test_ident_with_control_byte() -> None:
    event = reading(build("1-0:1.7.0(00.100*kW)", ident="ABc5\x02XY-200"))
    assert event.manufacturer == "ABC"
    assert event.model == "ABc5\x02XY-200"


def test_meter_id_hex_decoded_value_kept_literal() -> None:
    hex_id = b"XYZ0123456789".hex().upper()
    event = reading(build(f"0-0:96.1.1({hex_id})", "1-0:1.7.0(00.100*kW)"))
    assert event.meter_id == "XYZ0123456789"
    assert event.values["0-0:96.1.1.255"] == Value(hex_id)


@pytest.mark.parametrize("sent", ["12345678", "00000000000000", "3960221976", "ABC123"])
def test_meter_id_not_printable_hex_kept(sent: str) -> None:
    assert reading(build(f"0-0:96.1.0({sent})", "1-0:1.7.0(00.100*kW)")).meter_id == sent


def test_meter_id_preference_and_absence() -> None:
    event = reading(build("0-0:96.1.0(1111)", f"0-0:96.1.1({b'ABCD'.hex()})", "1-0:1.7.0(00.100*kW)"))
    assert event.meter_id == "ABCD"
    assert reading(build("0-0:96.1.1()", "1-0:1.7.0(00.100*kW)")).meter_id is None


# ---------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("group", "value", "unit"),
    [
        ("00.278*kW", 278, "W"),
        ("0278.5*kW", 278500, "W"),
        ("123.4567*kW", 123456.7, "W"),
        ("99.999*kW", 99999, "W"),
        ("250.000*kW", 250000, "W"),  # far above 65,535 W
        ("000286*W", 286, "W"),
        ("001688.21*W", 1688.21, "W"),
        ("00.504*kvar", 504, "var"),
        ("0000.244*kVAr", 244, "var"),
        ("001.5*kVA", 1500, "VA"),
        ("006545766*Wh", 6545.766, "kWh"),
        ("12*Wh", 0.012, "kWh"),
        ("000747*varh", 0.747, "kvarh"),
        ("000123.456*kWh", 123.456, "kWh"),
        ("00032549.5061662*kWh", 32549.5061662, "kWh"),
        ("00001724.067*kVArh", 1724.067, "kvarh"),
        ("229.9*V", 229.9, "V"),
        ("003*A", 3, "A"),
        ("50.00*Hz", 50.0, "Hz"),
        ("00012.345*m3", 12.345, "m3"),
        ("240.860*GJ", 240.86, "GJ"),
        ("0000237126*s", 237126, "s"),
        ("-01.500*kW", -1500, "W"),
        ("12.5*lx", 12.5, "lx"),  # unknown unit: number as sent
    ],
)
def test_numbers_and_units(group: str, value: float, unit: str) -> None:
    got = reading(build(f"1-0:99.1.0({group})")).values["1-0:99.1.0.255"]
    assert got.unit == unit
    assert got.value == value  # exact: no float noise from the unit conversion
    assert type(got.value) is type(value)


@pytest.mark.parametrize(
    "group", ["0002", "", "4.556", "m3", "1ESY1336001560", "12*", "1e5*kW", "nan*kW", "1_0*W"]
)
def test_literal_strings(group: str) -> None:
    assert reading(build(f"0-0:96.14.0({group})")).values["0-0:96.14.0.255"] == Value(group)


# `_parse_line` decodes `OBIS(number*unit)` and `OBIS(timestamp)` lines without the general path;
# both must give the same result for every line, including the near misses the fast path hands on.
_FAST_PATH_LINES = st.builds(
    lambda obis, content, tail: f"{obis}({content}{tail}",
    st.sampled_from(["1-0:1.7.0", "0-0:1.0.0", "1-0:1.8.1*255", "01-0:1.8.1", "1-0:256.7.0", "", " 1-0:1.7.0"]),
    st.one_of(
        st.builds(
            lambda number, unit: f"{number}*{unit}",
            st.from_regex(r"\A[+-]?[0-9]{0,42}(\.[0-9]{0,42})?\Z"),
            st.sampled_from([*dsmr._UNITS, "kwh", "KVAR", "lx", "", "kW ", "k*W"]),
        ),
        st.from_regex(r"\A[0-9]{12}[SWX]\Z"),
        st.text(alphabet="0123456789.*-SW\u00b2\u0663 ", max_size=20),
    ),
    st.sampled_from([")", ")\r", ") ", ")\r\r", "", ")(1)"]),
)


@settings(max_examples=400, deadline=None)
@given(_FAST_PATH_LINES)
def test_fast_path_agrees_with_general_path(line: str) -> None:
    for winter, summer in (("+01:00", "+02:00"), ("-05:00", "-04:00")):
        fast = dsmr._parse_line(line, winter, summer)
        general = dsmr._parse_line_general(line, winter, summer)
        assert fast == general, line
        if fast is not None and general is not None:
            assert type(fast[1].value) is type(general[1].value), line  # 5 and 5.0 compare equal


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"\A[0-9]{1,40}\Z"), st.sampled_from(["Wh", "varh", "VAh"]))
def test_integer_wh_fast_path_is_the_closest_double(digits: str, unit: str) -> None:
    """Integer Wh values take `int / 1000` on the fast path: the same double as the moved point."""
    line = f"1-0:1.8.0({digits}*{unit})\r"
    fast = dsmr._parse_line(line, "+01:00", "+02:00")
    general = dsmr._parse_line_general(line, "+01:00", "+02:00")
    assert fast is not None and general is not None
    assert type(fast[1].value) is float and fast == general
    assert fast[1].value == float(f"{digits[:-3] or 0}.{digits[-3:].rjust(3, '0')}")


# Whole telegrams decoded with the line memo emptied must equal the general path, line by line,
# with the first occurrence of a repeated OBIS key kept.
_TELEGRAM_LINES = st.lists(
    st.builds(
        lambda obis, content, eol_space: f"{obis}({content}){eol_space}",
        st.sampled_from(["1-0:1.7.0", "0-0:1.0.0", "1-0:1.8.1*255", "0-1:24.2.1", "0-0:96.1.1", "1-0:256.7.0"]),
        st.one_of(
            st.builds(
                lambda number, unit: f"{number}*{unit}",
                st.from_regex(r"\A[+-]?[0-9]{0,12}(\.[0-9]{0,5})?\Z"),
                st.sampled_from([*dsmr._UNITS, "kwh", "lx"]),
            ),
            st.from_regex(r"\A[0-9]{12}[SWX]\Z"),
            st.sampled_from(["", "0001", "4B464D", "(", ")(1)(2*kW"]),
        ),
        st.sampled_from(["", " "]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(_TELEGRAM_LINES)
def test_cold_telegram_agrees_with_general_path(lines: list[str]) -> None:
    expected: dict[str, Value] = {}
    for line in lines:
        entry = dsmr._parse_line_general(line, "+01:00", "+02:00")
        if entry is not None and entry[0] not in expected:
            expected[entry[0]] = entry[1]
    dsmr._line_caches.clear()
    event = parse_telegram(build(*lines))
    if not expected:
        assert isinstance(event, UndecodedFrame)
        return
    assert isinstance(event, Reading)
    assert event.values == expected
    assert [type(v.value) for v in event.values.values()] == [type(v.value) for v in expected.values()]
    assert parse_telegram(build(*lines)).values == expected  # type: ignore[union-attr]  # memo warm


def test_obis_normalisation() -> None:
    event = reading(
        build(
            "1-0:1.8.0*255(00001.5*kWh)",
            "1-0:2.8.0(00002.5*kWh)",
            "0-0:96.1.255*255(1ESY1)",
            "0-1:24.1.0(003)",
        )
    )
    assert set(event.values) == {"1-0:1.8.0.255", "1-0:2.8.0.255", "0-0:96.1.255.255", "0-1:24.1.0.255"}
    assert event.meter_id == "1ESY1"


def test_channels_not_merged() -> None:
    event = reading(build("1-0:1.7.0(00.100*kW)", "1-1:1.7.0(00.200*kW)"))
    assert event.values["1-0:1.7.0.255"].value == 100
    assert event.values["1-1:1.7.0.255"].value == 200


def test_duplicate_obis_first_wins() -> None:
    event = reading(build("0-0:17.0.0(16500)", "0-0:17.0.0(00000)", "1-0:1.7.0(00.100*kW)"))
    assert event.values["0-0:17.0.0.255"] == Value("16500")


def test_garbage_lines_skipped() -> None:
    event = reading(
        build(
            "1-0:1.7.0(00.100*kW)",
            "garbage ( without end",
            "x-y:z(1)",
            "1-0:999.7.0(1*W)",
            "  ",
            "1-0:2.7.0(00.200*kW)",
        )
    )
    assert set(event.values) == {"1-0:1.7.0.255", "1-0:2.7.0.255"}


# ------------------------------------------------------------------------------------ timestamps
def test_winter_and_summer_flags() -> None:
    event = reading(build("0-0:1.0.0(240712083000S)", "0-1:24.2.1(240115120000W)(00012.345*m3)"))
    assert event.values["0-0:1.0.0.255"].value == "2024-07-12T08:30:00+02:00"
    assert event.timestamp == datetime(2024, 7, 12, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    assert event.values["0-1:24.2.1.255"] == Value(["2024-01-15T12:00:00+01:00", 12.345], "m3")


def test_w_flag_honoured_in_summer() -> None:
    # Some Nordic meters keep standard time all year and say so with W.
    event = reading(build("0-0:1.0.0(240712083000W)"))
    assert event.values["0-0:1.0.0.255"].value == "2024-07-12T08:30:00+01:00"


def test_standard_offset_parameter() -> None:
    event = reading(
        build("0-0:1.0.0(240712083000S)", "0-0:1.0.1(240112083000W)"), standard_offset_minutes=120
    )
    assert event.values["0-0:1.0.0.255"].value == "2024-07-12T08:30:00+03:00"
    assert event.values["0-0:1.0.1.255"].value == "2024-01-12T08:30:00+02:00"
    event = reading(build("0-0:1.0.0(240112083000W)"), standard_offset_minutes=0)
    assert event.timestamp is not None and event.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["632525252525W", "240230120000W", "230229120000W", "241301000000S", "240101246000W"]
)
def test_invalid_timestamps_stay_literal(text: str) -> None:
    event = reading(build(f"0-0:1.0.0({text})"))
    assert event.values["0-0:1.0.0.255"] == Value(text)
    assert event.timestamp is None


def test_leap_day_and_century_pivot() -> None:
    event = reading(build("0-0:1.0.0(240229120000W)", "0-1:24.2.1(700101010000W)(00000000)"))
    assert event.values["0-0:1.0.0.255"].value == "2024-02-29T12:00:00+01:00"
    assert event.values["0-1:24.2.1.255"] == Value(["1970-01-01T01:00:00+01:00", "00000000"], None)


def test_timestamp_without_flag() -> None:
    event = reading(build("0-0:1.0.0(240112083000)"))
    assert event.values["0-0:1.0.0.255"] == Value("240112083000")
    assert event.timestamp == datetime(2024, 1, 12, 8, 30)  # naive wall clock


def test_nes_timestamp_is_naive() -> None:
    event = reading(build("0-0:1.0.0(20240111 09:35:00)"))
    assert event.values["0-0:1.0.0.255"] == Value("2024-01-11T09:35:00")
    assert event.timestamp == datetime(2024, 1, 11, 9, 35)


# ---------------------------------------------------------------------------- multi-value lines
def test_gas_line() -> None:
    event = reading(build("0-1:24.1.0(003)", "0-1:24.2.1(170102161005W)(00000.107*m3)"))
    assert event.values["0-1:24.2.1.255"] == Value(["2017-01-02T16:10:05+01:00", 0.107], "m3")


def test_dsmr22_gas_continuation_line() -> None:
    event = reading(
        build("0-1:24.3.0(161107190000)(00)(60)(1)(0-1:24.2.1)(m3)", "(00001.001)", "0-1:24.4.0(1)", crc=None)
    )
    assert event.values["0-1:24.3.0.255"] == Value(
        ["161107190000", "00", "60", "1", "0-1:24.2.1", "m3", "00001.001"]
    )
    assert event.values["0-1:24.4.0.255"] == Value("1")


def test_continuation_extends_single_value_and_orphan_is_ignored() -> None:
    event = reading(build("(12)", "0-1:24.3.0(00)", "(00001.5*m3)"))
    assert event.values == {"0-1:24.3.0.255": Value(["00", 1.5], "m3")}


def test_capacity_tariff_lines() -> None:
    event = reading(
        build(
            "1-0:1.6.0(231102114500W)(03.064*kW)",
            "0-0:98.1.0(2)(1-0:1.6.0)(1-0:1.6.0)(230801000000S)(632525252525W)(00.000*kW)"
            "(230901000000S)(230831181500S)(01.862*kW)",
        )
    )
    assert event.values["1-0:1.6.0.255"] == Value(["2023-11-02T11:45:00+01:00", 3064], "W")
    assert event.values["0-0:98.1.0.255"] == Value(
        [
            "2", "1-0:1.6.0", "1-0:1.6.0", "2023-08-01T00:00:00+02:00", "632525252525W", 0,
            "2023-09-01T00:00:00+02:00", "2023-08-31T18:15:00+02:00", 1862,
        ],
        "W",
    )  # fmt: skip


def test_event_log_and_mixed_units_take_last_numeric_unit() -> None:
    event = reading(
        build(
            "1-0:99.97.0(1)(0-0:96.7.19)(190326095015W)(0000002014*s)",
            "0-0:98.1.0(230701000000S)(000040.777*kWh)(03.564*kW)",
        )
    )
    assert event.values["1-0:99.97.0.255"] == Value(
        ["1", "0-0:96.7.19", "2019-03-26T09:50:15+01:00", 2014], "s"
    )
    assert event.values["0-0:98.1.0.255"] == Value(["2023-07-01T00:00:00+02:00", 40.777, 3564], "W")


def test_text_message_latin1() -> None:
    event = reading(build("0-0:96.13.0(Storing \xe9\xe8 op (net))", "1-0:1.7.0(00.100*kW)"))
    assert event.values["0-0:96.13.0.255"] == Value("Storing \xe9\xe8 op (net)")


# -------------------------------------------------------------------------------------- memoising
def test_repeated_telegrams_give_equal_readings() -> None:
    raw = build("0-0:1.0.0(240102030405W)", "1-0:1.7.0(01.234*kW)", "0-1:24.2.1(240102030000W)(00012.345*m3)")
    first, second = reading(raw), reading(raw)
    assert first.values == second.values
    other = reading(raw, standard_offset_minutes=0)  # same lines, another offset: no stale cache hit
    assert other.values["0-0:1.0.0.255"].value == "2024-01-02T03:04:05+00:00"


def test_caches_stay_bounded() -> None:
    for chunk in range(12):  # 6,000 distinct lines and keys, in telegrams under MAX_TELEGRAM
        lines = [f"0-{chunk}:96.{n % 250}.{n // 250}({n:08d})" for n in range(500)]
        reading(build(*lines))
    assert all(len(cache) <= dsmr._CACHE_LIMIT for cache in dsmr._line_caches.values())
    assert len(dsmr._obis_cache) <= dsmr._CACHE_LIMIT


# ------------------------------------------------------------------------------------ robustness
SAMPLE = build(
    "1-3:0.2.8(50)",
    "0-0:1.0.0(240102030405W)",
    "0-0:96.1.1(4B464D31323334)",
    "1-0:1.8.1(000123.456*kWh)",
    "1-0:1.7.0(01.234*kW)",
    "1-0:99.97.0(1)(0-0:96.7.19)(190326095015W)(0000002014*s)",
    "0-1:24.2.1(240102030000W)(00012.345*m3)",
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    for candidate in (data, b"/" + data, b"/ABC5\r\n\r\n" + data + b"\r\n!\r\n"):
        event = parse_telegram(candidate)
        assert isinstance(event, Reading | UndecodedFrame)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SAMPLE)))
def test_truncated_never_raises(cut: int) -> None:
    event = parse_telegram(SAMPLE[:cut])
    if isinstance(event, Reading):
        # All data lines end before '!'. A cut right after it looks like a telegram without a CRC;
        # a cut inside the CRC digits never matches.
        bang = SAMPLE.index(b"!")
        assert (cut == bang + 1 and event.crc_present is False) or (cut >= bang + 5 and event.crc_present)
        assert event.values == reading(SAMPLE).values


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flip_in_covered_bytes_never_reads(data: st.DataObject) -> None:
    end = SAMPLE.index(b"!") + 5  # '/' through '!' plus the CRC digits
    position = data.draw(st.integers(min_value=0, max_value=end - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    flipped = bytearray(SAMPLE)
    flipped[position] ^= 1 << bit
    event = parse_telegram(bytes(flipped))
    if isinstance(event, Reading):
        # Only a case flip of a CRC hex letter keeps the telegram intact.
        assert position > SAMPLE.index(b"!") and bytes(flipped).upper() == SAMPLE.upper()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["1-0:1.7.0", "1-0:32.7.0", "0-0:96.13.0", "0-1:24.2.1", "1-0:1.8.1*255", "(", "x"]
            ),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30),
        ),
        max_size=20,
    )
)
def test_arbitrary_lines_with_valid_crc_never_raise(lines: list[tuple[str, str]]) -> None:
    raw = build(*(f"{key}({content})" for key, content in lines))
    event = parse_telegram(raw)
    assert isinstance(event, Reading | UndecodedFrame)
    if isinstance(event, UndecodedFrame):
        assert event.error == "bad_telegram"
