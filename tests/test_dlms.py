"""DLMS interpretation: each list shape, built here with the A-XDR helpers of tests/test_axdr.py."""

from __future__ import annotations

import math
import struct
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsd.decoder.axdr import cosem_datetime
from amsd.decoder.dlms import DlmsInterpreter, _apply, _iso, _scaling_op
from amsd.decoder.events import Reading, UndecodedFrame, Value
from amsd.decoder.profiles import LG_E450, PROFILE_NAMES, infer_swiss_scales
from tests.test_axdr import (
    array,
    cosem_dt,
    enum,
    f32,
    i8,
    i16,
    i64,
    notification,
    obis,
    octet,
    scaler_unit,
    struct_,
    u8,
    u16,
    u32,
    u64,
    visible,
)

W, VAR, WH, VARH, A, V, COUNT = 27, 29, 30, 32, 33, 35, 255


def reading(apdu: bytes, profile: str = "auto", system_title: str | None = None) -> Reading:
    event = DlmsInterpreter(profile).decode(apdu, raw=b"raw", system_title=system_title, invocation_counter=9)
    assert isinstance(event, Reading), event
    return event


def values(event: Reading) -> dict[str, tuple[object, str | None]]:
    return {key: (value.value, value.unit) for key, value in event.values.items()}


def register(code: str, value: bytes, scaler: int, unit: int) -> bytes:
    return struct_(obis(code), value, scaler_unit(scaler, unit))


# ---------------------------------------------------------------------- OBIS + scaler/unit (Aidon)
def aidon_list3(energy: int = 8582328) -> bytes:
    return notification(
        array(
            struct_(obis("1-1:0.2.129.255"), visible("AIDON_V0001")),
            struct_(obis("0-0:96.1.0.255"), visible("7359990000000001")),
            struct_(obis("0-0:96.1.7.255"), visible("6525")),
            register("1-0:1.7.0.255", u32(1247), 0, W),
            register("1-0:4.7.0.255", u32(128), 0, VAR),
            register("1-0:31.7.0.255", i16(13), -1, A),
            register("1-0:32.7.0.255", u16(2276), -1, V),
            struct_(obis("0-0:1.0.0.255"), octet(cosem_dt(2020, 1, 21, 16, 0, 0, deviation=0))),
            register("1-0:1.8.0.255", u32(energy), 1, WH),
            register("1-0:3.8.0.255", u32(58243), 1, VARH),
        )
    )


def test_aidon_list_with_scalers() -> None:
    event = reading(aidon_list3())
    assert values(event) == {
        "1-1:0.2.129.255": ("AIDON_V0001", None),
        "0-0:96.1.0.255": ("7359990000000001", None),
        "0-0:96.1.7.255": ("6525", None),
        "1-0:1.7.0.255": (1247, "W"),
        "1-0:4.7.0.255": (128, "var"),
        "1-0:31.7.0.255": (1.3, "A"),
        "1-0:32.7.0.255": (227.6, "V"),
        "0-0:1.0.0.255": ("2020-01-21T16:00:00", None),
        "1-0:1.8.0.255": (85823.28, "kWh"),  # exact decimal, not 85823.28000000001
        "1-0:3.8.0.255": (582.43, "kvarh"),
    }
    # Norwegian Aidon sends deviation 0 for a local clock: naive local time.
    assert event.timestamp == datetime(2020, 1, 21, 16, 0, 0)
    assert (event.meter_id, event.model, event.list, event.manufacturer) == (
        "7359990000000001",
        "6525",
        "AIDON_V0001",
        "Aidon",
    )
    assert (event.system_title, event.invocation_counter, event.raw) == (None, 9, b"raw")


def test_decimal_values_are_clean() -> None:
    for energy in (1, 7, 99999999, 123456789, 4294967295):
        value = reading(aidon_list3(energy)).values["1-0:1.8.0.255"].value
        assert repr(value) == repr(round(energy / 100, 2))


def test_aidon_list1_borrows_the_meter_named_by_an_earlier_list() -> None:
    interpreter = DlmsInterpreter()
    list1 = notification(array(register("1-0:1.7.0.255", u32(1661), 0, W)))
    first = interpreter.decode(list1, raw=b"")
    assert isinstance(first, Reading) and first.meter_id is None
    assert values(first) == {"1-0:1.7.0.255": (1661, "W")}
    interpreter.decode(aidon_list3(), raw=b"")
    later = interpreter.decode(list1, raw=b"")
    assert isinstance(later, Reading)
    assert (later.meter_id, later.model, later.manufacturer) == ("7359990000000001", "6525", "Aidon")


def test_flat_triplets_with_leading_time_and_aware_clock() -> None:
    # AT Sagemcom / Kaifa style: date-time first, then OBIS, value, {scaler, unit} in one structure.
    stamp = cosem_dt(2024, 11, 15, 14, 45, 45, deviation=-60)
    apdu = notification(
        struct_(
            octet(stamp),
            obis("1-0:1.8.0.255"),
            u32(4752026),
            scaler_unit(0, WH),
            obis("1-0:13.7.0.255"),
            i16(-94),
            scaler_unit(-3, COUNT),
            obis("0-0:96.1.0.255"),
            octet(b"1KFM0200182517"),
        ),
        stamp,
        style="bare",
    )
    event = reading(apdu)
    assert values(event)["1-0:1.8.0.255"] == (4752.026, "kWh")
    assert values(event)["1-0:13.7.0.255"] == (-0.094, "")
    assert event.timestamp is not None and event.timestamp.isoformat() == "2024-11-15T14:45:45+01:00"
    assert event.meter_id == "1KFM0200182517"
    assert event.manufacturer == "Kaifa"  # DIN 43863-5 FLAG id in the meter number


def test_frame_scaler_beats_any_table() -> None:
    apdu = notification(
        struct_(visible("Kamstrup_V0001"), obis("1-1:31.7.0.255"), u16(903), scaler_unit(-3, A))
    )
    assert values(reading(apdu))["1-1:31.7.0.255"] == (0.903, "A")


# ----------------------------------------------------------------------------------------- Kamstrup
def kamstrup_list3() -> bytes:
    return notification(
        struct_(
            visible("Kamstrup_V0001"),
            obis("1-1:0.0.5.255"),
            visible("5706567000000001"),
            obis("1-1:96.1.1.255"),
            visible("6841131BN243101040"),
            obis("1-1:1.7.0.255"),
            u32(1247),
            obis("1-1:31.7.0.255"),
            u32(189),
            obis("1-1:32.7.0.255"),
            u16(236),
            obis("0-1:1.0.0.255"),
            octet(cosem_dt(2021, 11, 25, 23, 0, 55)),
            obis("1-1:1.8.0.255"),
            u32(8582328),
            obis("1-1:4.8.0.255"),
            u32(1477438),
        ),
        cosem_dt(2021, 11, 25, 23, 0, 55),
        style="bare",
    )


def test_kamstrup_norwegian_default() -> None:
    event = reading(kamstrup_list3())
    assert values(event) == {
        "1-1:0.0.5.255": ("5706567000000001", None),
        "1-1:96.1.1.255": ("6841131BN243101040", None),
        "1-1:1.7.0.255": (1247, "W"),
        "1-1:31.7.0.255": (1.89, "A"),
        "1-1:32.7.0.255": (236, "V"),
        "0-1:1.0.0.255": ("2021-11-25T23:00:55", None),
        "1-1:1.8.0.255": (85823.28, "kWh"),
        "1-1:4.8.0.255": (14774.38, "kvarh"),
    }
    assert (event.meter_id, event.model, event.list, event.manufacturer) == (
        "5706567000000001",
        "6841131BN243101040",
        "Kamstrup_V0001",
        "Kamstrup",
    )
    assert event.timestamp == datetime(2021, 11, 25, 23, 0, 55)


def test_kamstrup_swedish_profile_energy_in_wh() -> None:
    event = reading(kamstrup_list3(), profile="kamstrup-se")
    assert values(event)["1-1:1.8.0.255"] == (8582.328, "kWh")
    assert values(event)["1-1:4.8.0.255"] == (1477.438, "kvarh")
    assert values(event)["1-1:31.7.0.255"] == (1.89, "A")


def test_raw_profile_publishes_unscaled_values() -> None:
    event = reading(kamstrup_list3(), profile="raw")
    assert values(event)["1-1:1.8.0.255"] == (8582328, None)


# ------------------------------------------------------------------------------- Kaifa positional
KAIFA_TIME = cosem_dt(2020, 1, 25, 14, 0, 10)


def kaifa(*items: bytes) -> bytes:
    return notification(struct_(*items), KAIFA_TIME, style="tagged")


KAIFA_HEAD = (octet(b"KFM_001"), octet(b"6970631400000001"), octet(b"MA304H3E"))
KAIFA_POWER = (u32(4904), u32(0), u32(0), u32(377))
KAIFA_3P = (u32(14571), u32(15643), u32(9525), u32(2193), u32(0), u32(2205))
KAIFA_LIST3 = (octet(KAIFA_TIME), u32(79591144), u32(0), u32(889389), u32(3210932))


def test_kaifa_three_phase_list2_and_list3() -> None:
    list2 = values(reading(kaifa(*KAIFA_HEAD, *KAIFA_POWER, *KAIFA_3P)))
    assert list2 == {
        "0-0:96.1.0.255": ("6970631400000001", None),
        "0-0:96.1.7.255": ("MA304H3E", None),
        "1-0:1.7.0.255": (4904, "W"),
        "1-0:2.7.0.255": (0, "W"),
        "1-0:3.7.0.255": (0, "var"),
        "1-0:4.7.0.255": (377, "var"),
        "1-0:31.7.0.255": (14.571, "A"),
        "1-0:51.7.0.255": (15.643, "A"),
        "1-0:71.7.0.255": (9.525, "A"),
        "1-0:32.7.0.255": (219.3, "V"),
        "1-0:52.7.0.255": (0.0, "V"),
        "1-0:72.7.0.255": (220.5, "V"),
    }
    event = reading(kaifa(*KAIFA_HEAD, *KAIFA_POWER, *KAIFA_3P, *KAIFA_LIST3))
    list3 = values(event)
    assert list3["0-0:1.0.0.255"] == ("2020-01-25T14:00:10", None)
    assert list3["1-0:1.8.0.255"] == (79591.144, "kWh")
    assert list3["1-0:4.8.0.255"] == (3210.932, "kvarh")
    assert (event.meter_id, event.model, event.list, event.manufacturer) == (
        "6970631400000001",
        "MA304H3E",
        "KFM_001",
        "Kaifa",
    )


def test_kaifa_without_l2_voltage() -> None:
    event = reading(kaifa(*KAIFA_HEAD, *KAIFA_POWER, u32(1), u32(2), u32(3), u32(2300), u32(2310)))
    got = values(event)
    assert got["1-0:32.7.0.255"] == (230.0, "V") and got["1-0:72.7.0.255"] == (231.0, "V")
    assert "1-0:52.7.0.255" not in got


def test_kaifa_one_phase_lists() -> None:
    list2 = values(reading(kaifa(*KAIFA_HEAD, *KAIFA_POWER, u32(5000), u32(2300))))
    assert list2["1-0:31.7.0.255"] == (5.0, "A") and list2["1-0:32.7.0.255"] == (230.0, "V")
    list3 = values(reading(kaifa(*KAIFA_HEAD, *KAIFA_POWER, u32(5000), u32(2300), *KAIFA_LIST3)))
    assert list3["1-0:1.8.0.255"] == (79591.144, "kWh")


def test_kaifa_list1_before_and_after_the_meter_is_named() -> None:
    interpreter = DlmsInterpreter()
    list1 = kaifa(u32(5502))
    first = interpreter.decode(list1, raw=b"")
    assert isinstance(first, Reading)
    assert values(first) == {"1-0:1.7.0.255": (5502, "W")}
    assert first.meter_id is None and first.manufacturer == "Kaifa"
    assert first.timestamp == datetime(2020, 1, 25, 14, 0, 10)  # header time: list 1 has no clock
    interpreter.decode(kaifa(*KAIFA_HEAD, *KAIFA_POWER, *KAIFA_3P), raw=b"")
    later = interpreter.decode(list1, raw=b"")
    assert isinstance(later, Reading)
    assert (later.meter_id, later.model, later.manufacturer) == ("6970631400000001", "MA304H3E", "Kaifa")


def test_swedish_kaifa_obis_list_uses_kaifa_scalers() -> None:
    apdu = notification(
        struct_(
            obis("1-0:0.2.129.255"),
            octet(b"KFM_001"),
            obis("0-0:96.1.0.255"),
            octet(b"7340000000000001"),
            obis("1-0:31.7.0.255"),
            u32(6781),
            obis("1-0:32.7.0.255"),
            u32(2322),
            obis("0-0:1.0.0.255"),
            octet(cosem_dt(2021, 9, 22, 17, 35, 30, deviation=-60)),
            obis("1-0:1.8.0.255"),
            u32(4786979),
        )
    )
    event = reading(apdu)
    got = values(event)
    assert got["1-0:31.7.0.255"] == (6.781, "A")
    assert got["1-0:32.7.0.255"] == (232.2, "V")
    assert got["1-0:1.8.0.255"] == (4786.979, "kWh")
    assert got["0-0:1.0.0.255"] == ("2021-09-22T17:35:30+01:00", None)
    assert event.list == "KFM_001" and event.manufacturer == "Kaifa"


# ------------------------------------------------------------------------ Swiss descriptor lists
def descriptor(cls: int, code: str, attr: int = 2) -> bytes:
    return struct_(u16(cls), obis(code), i8(attr), u16(0))


def swiss_push(ldn: str, voltage: int = 236, current: int = 9, power: int = 28) -> bytes:
    descriptors = array(
        descriptor(40, "0-8:25.9.0.255"),
        descriptor(40, "0-8:25.9.0.255", 1),
        descriptor(1, "0-0:42.0.0.255"),
        descriptor(8, "0-0:1.0.0.255"),
        descriptor(3, "1-1:1.8.0.255"),
        descriptor(3, "1-1:4.8.0.255"),
        descriptor(3, "1-0:1.7.0.255"),
        descriptor(3, "1-0:32.7.0.255"),
        descriptor(3, "1-0:31.7.0.255"),
        descriptor(3, "1-0:13.7.0.255"),
        descriptor(4, "0-1:24.2.1.255"),
    )
    return notification(
        struct_(
            descriptors,
            obis("0-8:25.9.0.255"),
            octet(ldn.encode()),
            octet(cosem_dt(2021, 7, 6, 14, 58, 18)),
            u32(482939),
            u64(344697),
            i64(power),
            u16(voltage),
            u16(current),
            i16(941),
            u32(30545),
        ),
        cosem_dt(2021, 7, 6, 14, 58, 16),
    )


def test_swiss_descriptor_list_default_lg_e450() -> None:
    event = reading(swiss_push("LGZ1030000000001"))
    assert values(event) == {
        "0-0:42.0.0.255": ("LGZ1030000000001", None),
        "0-0:1.0.0.255": ("2021-07-06T14:58:18", None),
        "1-1:1.8.0.255": (482.939, "kWh"),
        "1-1:4.8.0.255": (344.697, "kvarh"),
        "1-0:1.7.0.255": (28, "W"),
        "1-0:32.7.0.255": (236, "V"),
        "1-0:31.7.0.255": (0.09, "A"),
        "1-0:13.7.0.255": (0.941, ""),
        "0-1:24.2.1.255": (30545, None),  # M-Bus channel value: no documented scaling
    }
    assert event.timestamp == datetime(2021, 7, 6, 14, 58, 18)  # the clock value, not the header
    assert (event.meter_id, event.manufacturer, event.list) == (
        "LGZ1030000000001",
        "Landis+Gyr",
        "push-object-list",
    )


def test_swiss_profiles_and_iskra() -> None:
    assert values(reading(swiss_push("LGZ1030000000001", voltage=2357), "lg-e360"))["1-0:32.7.0.255"] == (
        235.7,
        "V",
    )
    assert values(reading(swiss_push("LGZ1030000000001", current=400), "lg-e570"))["1-0:31.7.0.255"] == (
        400,
        "A",
    )
    iskra = reading(swiss_push("ISK1030000000001", voltage=2347))
    assert values(iskra)["1-0:32.7.0.255"] == (234.7, "V")
    assert iskra.manufacturer == "Iskraemeco"


def test_descriptor_count_mismatch_is_unknown_list() -> None:
    three = array(
        descriptor(3, "1-0:1.7.0.255"), descriptor(3, "1-0:2.7.0.255"), descriptor(3, "1-0:3.7.0.255")
    )
    event = DlmsInterpreter().decode(notification(struct_(three, u32(1))), raw=b"x")
    assert isinstance(event, UndecodedFrame) and event.error == "unknown_list"
    # Without the push setup's self-reference, values follow the descriptor array one to one.
    two = array(descriptor(3, "1-0:1.7.0.255"), descriptor(3, "1-0:2.7.0.255"))
    assert values(reading(notification(struct_(two, u32(1), u32(2))))) == {
        "1-0:1.7.0.255": (1, "W"),
        "1-0:2.7.0.255": (2, "W"),
    }


def test_lg_no_push_list_uses_swiss_table_from_system_title() -> None:
    apdu = notification(
        struct_(
            octet(cosem_dt(2022, 2, 23, 21, 36, 0)),
            obis("1-0:1.8.0.255"),
            u32(6226327),
            obis("1-0:1.7.0.255"),
            u32(769),
        ),
        cosem_dt(2022, 2, 23, 21, 36, 0),
    )
    event = reading(apdu, system_title="4C475A6700000001")
    assert values(event) == {"1-0:1.8.0.255": (6226.327, "kWh"), "1-0:1.7.0.255": (769, "W")}
    assert event.manufacturer == "Landis+Gyr" and event.system_title == "4C475A6700000001"
    assert event.timestamp == datetime(2022, 2, 23, 21, 36, 0)


def test_unknown_meter_without_scalers_is_published_raw() -> None:
    event = reading(notification(struct_(obis("1-0:1.8.0.255"), u32(1234))))
    assert values(event) == {"1-0:1.8.0.255": (1234, None)}


def test_mbus_channel_id_is_not_the_meter_id() -> None:
    apdu = notification(struct_(obis("0-1:96.1.0.255"), octet(b"24521662"), obis("1-0:1.7.0.255"), u32(1)))
    assert reading(apdu).meter_id is None


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("apdu", "error"),
    [
        (bytes.fromhex("C0010000080000010000FF0200"), "unsupported_apdu"),
        (b"", "unsupported_apdu"),
        (notification(struct_(octet(b"ABC"), u32(1), u8(2), u32(3))), "unknown_list"),
        (notification(u32(1)), "unknown_list"),
        (notification(struct_(u32(1)))[:-2], "truncated_apdu"),
        (notification(struct_(b"\x07\x00")), "bad_axdr_tag"),
    ],
)
def test_errors_become_undecoded_frames(apdu: bytes, error: str) -> None:
    event = DlmsInterpreter().decode(apdu, raw=b"raw", system_title="4B464D0000000001", invocation_counter=5)
    assert isinstance(event, UndecodedFrame)
    assert (event.layer, event.error, event.raw) == ("apdu", error, b"raw")
    assert (event.system_title, event.invocation_counter) == ("4B464D0000000001", 5)
    assert event.detail


def test_invalid_clock_is_kept_as_hex() -> None:
    bad = cosem_dt(2021, 13, 1, 0, 0, 0)
    event = reading(notification(array(struct_(obis("0-0:1.0.0.255"), octet(bad)))))
    assert values(event)["0-0:1.0.0.255"] == (bad.hex().upper(), None)
    assert event.timestamp is None


def test_other_value_types() -> None:
    apdu = notification(
        array(
            struct_(obis("0-0:96.13.0.255"), octet(b"\x00\x01\xff")),
            struct_(obis("0-0:96.14.0.255"), enum(2)),
            struct_(obis("0-0:96.3.10.255"), b"\x03\x01"),
            struct_(obis("0-0:96.15.0.255"), array(u8(1), u8(2))),
            struct_(obis("0-0:96.16.0.255"), b"\x19" + cosem_dt(2024, 1, 1, 0, 0, 0, deviation=-60)),
            struct_(obis("1-0:14.7.0.255"), b"\x17" + bytes.fromhex("42480000"), scaler_unit(0, 44)),
        )
    )
    got = values(reading(apdu))
    assert got["0-0:96.13.0.255"] == ("0001FF", None)
    assert got["0-0:96.14.0.255"] == (2, None)
    assert got["0-0:96.3.10.255"] == (True, None)
    assert got["0-0:96.15.0.255"] == ([1, 2], None)
    assert got["0-0:96.16.0.255"] == ("2024-01-01T00:00:00+01:00", None)
    assert got["1-0:14.7.0.255"] == (50.0, "Hz")


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="kamstrup-se"):
        DlmsInterpreter("no-such-meter")
    assert "auto" in PROFILE_NAMES


def test_never_raises_on_garbage() -> None:
    interpreter = DlmsInterpreter()
    for length in range(0, 64):
        data = bytes((i * 37 + length) & 0xFF for i in range(length))
        interpreter.decode(b"\x0f" + data, raw=data)


# ------------------------------------------------------------------------------ frame templates
def frames_with_changing_numbers() -> list[list[bytes]]:
    """Families of frames that differ only in numbers and clocks (what a meter repeats)."""
    aidon = [aidon_list3(energy) for energy in (1, 8582328, 4294967295)]
    kamstrup = [kamstrup_list3(), kamstrup_list3().replace(b"\x06\x00\x00\x04\xdf", b"\x06\x00\x01\x04\xdf")]
    kaifa_frames = [
        kaifa(*KAIFA_HEAD, u32(power), *KAIFA_POWER[1:], *KAIFA_3P, *KAIFA_LIST3) for power in (0, 1, 99999)
    ]
    swiss = [swiss_push("LGZ1030000000001", voltage=v, current=c) for v, c in ((230, 1), (236, 65535))]
    times = [cosem_dt(2024, 1, d, 1, 2, 3, deviation=-60) for d in (1, 2, 31)]
    flat = [
        notification(
            struct_(
                octet(t),
                obis("1-0:1.8.0.255"),
                u32(d),
                scaler_unit(0, WH),
                obis("1-0:14.7.0.255"),
                b"\x17" + bytes([0x42, 0x48, d, 0]),
                scaler_unit(0, 44),
            ),
            t,
            style="bare",
            invoke_id=d,
        )
        for d, t in zip((1, 2, 31), times, strict=True)
    ]
    return [aidon, kamstrup, kaifa_frames, swiss, flat]


@pytest.mark.parametrize("family", range(5))
def test_templates_give_the_same_readings_as_a_fresh_decode(family: int) -> None:
    frames = frames_with_changing_numbers()[family]
    warm = DlmsInterpreter()
    for _ in range(2):
        for apdu in frames:
            fast = warm.decode(apdu, raw=apdu)
            slow = DlmsInterpreter().decode(apdu, raw=apdu)
            assert fast == slow
            assert isinstance(fast, Reading) and isinstance(slow, Reading)
            assert [type(v.value) for v in fast.values.values()] == [
                type(v.value) for v in slow.values.values()
            ]
    assert warm._templates  # the fast path was taken


def test_template_does_not_hide_a_changed_string() -> None:
    interpreter = DlmsInterpreter()
    interpreter.decode(aidon_list3(), raw=b"")
    other = aidon_list3().replace(b"7359990000000001", b"7359990000000002")
    event = interpreter.decode(other, raw=b"")
    assert isinstance(event, Reading) and event.meter_id == "7359990000000002"


def test_template_respects_the_system_title() -> None:
    interpreter = DlmsInterpreter()
    apdu = notification(struct_(obis("1-0:1.8.0.255"), u32(1234)))
    first = interpreter.decode(apdu, raw=b"", system_title="4C475A6700000001")
    second = interpreter.decode(apdu, raw=b"", system_title=None)
    assert isinstance(first, Reading) and isinstance(second, Reading)
    assert first.values["1-0:1.8.0.255"] == Value(1.234, "kWh")
    assert second.values["1-0:1.8.0.255"] == Value(1234, None)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=True)),
    st.integers(-30, 30),
)
def test_template_scaling_is_the_general_scaling(raw: int | float, exponent: int) -> None:
    operator, operand = _scaling_op(exponent)
    fast, slow = operator(raw, operand), _apply(raw, exponent)
    assert fast == slow and type(fast) is type(slow)


_U32 = st.integers(0, 2**32 - 1)
_I16 = st.integers(-(2**15), 2**15 - 1)
_U16 = st.integers(0, 2**16 - 1)


@st.composite
def changing_lists(draw: st.DrawFn) -> list[bytes]:
    """Frames of one list whose numbers change from frame to frame."""
    shape = draw(st.sampled_from(("aidon", "kaifa", "flat")))
    frames = []
    for _ in range(draw(st.integers(2, 6))):
        if shape == "aidon":
            frames.append(aidon_list3(draw(_U32)))
        elif shape == "kaifa":
            power = [u32(draw(_U32)) for _ in range(4)]
            frames.append(kaifa(*KAIFA_HEAD, *power, *[u32(draw(_U32)) for _ in KAIFA_3P], *KAIFA_LIST3))
        else:
            frames.append(
                notification(
                    struct_(
                        obis("1-0:1.8.0.255"),
                        u32(draw(_U32)),
                        scaler_unit(draw(st.integers(-30, 30)), WH),
                        obis("1-0:31.7.0.255"),
                        i16(draw(_I16)),
                        obis("1-0:14.7.0.255"),
                        f32(draw(st.floats(width=32, allow_nan=False))),
                        scaler_unit(0, 44),
                    ),
                    cosem_dt(2024, 1, draw(st.integers(1, 31)), 1, 2, 3, deviation=-60),
                    invoke_id=draw(_U32),
                )
            )
    return frames


@settings(max_examples=60, deadline=None)
@given(changing_lists(), st.sampled_from(PROFILE_NAMES))
def test_templates_agree_with_the_general_path_on_changing_numbers(frames: list[bytes], profile: str) -> None:
    warm = DlmsInterpreter(profile)
    for apdu in frames:
        fast = warm.decode(apdu, raw=apdu)
        slow = DlmsInterpreter(profile).decode(apdu, raw=apdu)
        assert isinstance(fast, Reading)
        assert fast == slow
        assert [type(v.value) for v in fast.values.values()] == [type(v.value) for v in slow.values.values()]
    assert warm._templates


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 300), st.integers(2000, 2600), _U16),
            st.one_of(st.just(0), st.integers(0, 100), _U16),
            st.one_of(st.just(0), st.integers(-5000, 5000), st.integers(-(2**63), 2**63 - 1)),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_swiss_scale_inference_runs_on_the_template_path(numbers: list[tuple[int, int, int]]) -> None:
    """Until a frame holds the evidence, every frame is decided on its own numbers, as the general
    path decides; once one frame did, later frames keep its decision (as a template built then)."""
    warm = DlmsInterpreter()
    decided: dict[str, tuple[str | None, float]] = {}  # key -> (unit, scale) chosen with evidence
    for voltage, current, power in numbers:
        apdu = swiss_push("LGZ1030000000001", voltage=voltage, current=current, power=power)
        fast = warm.decode(apdu, raw=apdu)
        slow = DlmsInterpreter().decode(apdu, raw=apdu)
        assert isinstance(fast, Reading) and isinstance(slow, Reading)
        raws = {"1-0:32.7.0.255": voltage, "1-0:31.7.0.255": current}
        if not decided:
            assert fast == slow
            if infer_swiss_scales(LG_E450, [voltage, 0, 0], [current, 0, 0], power)[1]:
                for key, raw in raws.items():
                    number = fast.values[key].value
                    assert isinstance(number, int | float) and raw
                    decided[key] = (fast.values[key].unit, number / raw)
            continue
        assert {k: v for k, v in fast.values.items() if k not in raws} == {
            k: v for k, v in slow.values.items() if k not in raws
        }
        for key, raw in raws.items():
            unit, scale = decided[key]
            number = fast.values[key].value
            assert isinstance(number, int | float)
            assert fast.values[key].unit == unit and math.isclose(number, raw * scale, rel_tol=1e-9)
    assert warm._templates


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(
        st.one_of(st.integers(1, 9999), st.sampled_from([0, 0xFFFF]), _U16),
        st.integers(0, 13),
        st.integers(0, 32),
        st.sampled_from([0, 1, 9, 23, 24, 0xFF]) | st.integers(0, 255),
        st.sampled_from([0, 59, 60, 0xFF]) | st.integers(0, 255),
        st.sampled_from([0, 59, 60, 0xFF]) | st.integers(0, 255),
        st.sampled_from([0, 1, 50, 99, 100, 0xFF]),
        st.sampled_from([-0x8000, 0, -60, -120, 60, 840, -840, 841]) | st.integers(-(2**15), 2**15 - 1),
    ),
    st.booleans(),
)
def test_stamp_text_is_isoformat(fields: tuple[int, ...], naive: bool) -> None:
    year, month, day, hour, minute, second, hundredths, deviation = fields
    raw = struct.pack(">HBBBBBBBhB", year, month, day, 0xFF, hour, minute, second, hundredths, deviation, 0)
    stamp = cosem_datetime(raw, naive=naive)
    if stamp is not None:
        assert _iso(stamp, raw) == stamp.isoformat()
