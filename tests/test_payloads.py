"""MQTT payloads: readable keys, JSON shapes, amsreader compatibility, raw hex, per-value topics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from amsd import payloads
from amsd.decoder import Reading, UndecodedFrame, Value

RECEIVED = datetime(2026, 3, 1, 12, 0, 5, 250000, tzinfo=UTC)
METER_TIME = datetime(2026, 3, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1)))


def _reading(values: dict[str, Value], **kwargs: object) -> Reading:
    defaults: dict[str, object] = {
        "meter_id": "7359992890941742",
        "model": "6841131BN243101040",
        "timestamp": METER_TIME,
        "list": "3",
    }
    defaults.update(kwargs)
    return Reading(values=values, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obis", "key"),
    [
        ("1-0:1.7.0.255", "power_import"),
        ("1-0:2.7.0.255", "power_export"),
        ("1-0:3.7.0.255", "reactive_import"),
        ("1-0:4.7.0.255", "reactive_export"),
        ("1-0:31.7.0.255", "current_l1"),
        ("1-0:51.7.0.255", "current_l2"),
        ("1-0:71.7.0.255", "current_l3"),
        ("1-0:32.7.0.255", "voltage_l1"),
        ("1-0:52.7.0.255", "voltage_l2"),
        ("1-0:72.7.0.255", "voltage_l3"),
        ("1-0:1.8.0.255", "energy_import"),
        ("1-0:2.8.0.255", "energy_export"),
        ("1-0:3.8.0.255", "energy_reactive_import"),
        ("1-0:4.8.0.255", "energy_reactive_export"),
        ("1-0:1.8.1.255", "energy_import_t1"),
        ("1-0:1.8.2.255", "energy_import_t2"),
        ("1-0:21.7.0.255", "power_import_l1"),
        ("1-0:41.7.0.255", "power_import_l2"),
        ("1-0:61.7.0.255", "power_import_l3"),
        ("1-0:13.7.0.255", "power_factor"),
        ("1-0:14.7.0.255", "frequency"),
        ("1-1:1.7.0.255", "power_import"),  # Kamstrup channel 1
        ("1-1:32.7.0.255", "voltage_l1"),
        ("0-1:24.2.1.255", "gas"),
        ("0-2:24.2.1.255", "gas"),
        ("1-0:99.97.0.255", None),  # event log: no readable key
        ("0-0:1.0.0.255", None),  # clock
        ("0-0:96.1.0.255", None),  # meter id
        ("1-0:1.7.0", None),  # not a six-group code
        ("garbage", None),
    ],
)
def test_readable_keys(obis: str, key: str | None) -> None:
    assert payloads.readable_key(obis) == key


def test_keys_are_unique_and_snake_case() -> None:
    keys = list(payloads.READABLE_KEYS.values())
    assert len(keys) == len(set(keys))  # one OBIS quantity per key: entity ids never collide
    assert all(k.replace("_", "").isalnum() and k == k.lower() for k in keys)


def test_readable_values_first_channel_wins_and_skips_non_numbers() -> None:
    reading = _reading(
        {
            "1-0:1.7.0.255": Value(1247, "W"),
            "1-1:1.7.0.255": Value(9999, "W"),  # same key from channel 1: kept out, not merged
            "1-0:32.7.0.255": Value(229.7, "V"),
            "1-0:1.8.0.255": Value("n/a", None),  # a string where a number belongs: not on a number key
            "0-1:24.2.1.255": Value(["2026-03-01T12:00:00+01:00", 1234.567], "m3"),
            "0-0:96.1.0.255": Value("7359992890941742", None),
        }
    )
    assert payloads.readable_values(reading) == {"power_import": 1247, "voltage_l1": 229.7, "gas": 1234.567}


def test_state_payload_shape() -> None:
    reading = _reading({"1-0:1.7.0.255": Value(1247, "W"), "1-0:1.8.0.255": Value(12345.67, "kWh")})
    body = json.loads(payloads.state_payload(reading, RECEIVED, payloads.readable_values(reading)))
    assert list(body)[:4] == ["ts", "received", "meter_id", "model"]
    assert body == {
        "ts": "2026-03-01T13:00:00+01:00",
        "received": "2026-03-01T12:00:05.250000+00:00",
        "meter_id": "7359992890941742",
        "model": "6841131BN243101040",
        "power_import": 1247,
        "energy_import": 12345.67,
    }
    assert isinstance(body["power_import"], int) and isinstance(body["energy_import"], float)


def test_state_payload_without_meter_time_or_identity() -> None:
    reading = _reading({"1-0:1.7.0.255": Value(5, "W")}, timestamp=None, meter_id=None, model=None)
    body = json.loads(payloads.state_payload(reading, RECEIVED, payloads.readable_values(reading)))
    assert body["ts"] is None and body["meter_id"] is None and body["model"] is None
    assert body["power_import"] == 5


def test_payloads_are_compact_utf8_json() -> None:
    reading = _reading({"1-0:1.7.0.255": Value(1, "W")}, model="Zähler")
    raw = payloads.state_payload(reading, RECEIVED, payloads.readable_values(reading))
    assert b" " not in raw.replace(b"Z\xc3\xa4hler", b"")
    assert "Zähler" in raw.decode("utf-8")


def test_obis_payload_keeps_every_value_with_units() -> None:
    values = {
        "1-0:1.7.0.255": Value(1247, "W"),
        "1-1:1.7.0.255": Value(3, "W"),
        "0-0:96.1.0.255": Value("7359992890941742", None),
        "0-1:24.2.1.255": Value(["2026-03-01T12:00:00+01:00", 1234.567], "m3"),
    }
    body = json.loads(payloads.obis_payload(_reading(values), RECEIVED))
    assert body["ts"] == "2026-03-01T13:00:00+01:00"
    assert body["values"] == {
        "1-0:1.7.0.255": {"value": 1247, "unit": "W"},
        "1-1:1.7.0.255": {"value": 3, "unit": "W"},
        "0-0:96.1.0.255": {"value": "7359992890941742", "unit": None},
        "0-1:24.2.1.255": {"value": ["2026-03-01T12:00:00+01:00", 1234.567], "unit": "m3"},
    }


def test_amsreader_payload() -> None:
    values = {
        "1-0:1.7.0.255": Value(1247, "W"),
        "1-0:2.7.0.255": Value(0, "W"),
        "1-0:3.7.0.255": Value(10, "var"),
        "1-0:4.7.0.255": Value(220, "var"),
        "1-0:31.7.0.255": Value(1.5, "A"),
        "1-0:51.7.0.255": Value(2.5, "A"),
        "1-0:71.7.0.255": Value(3.5, "A"),
        "1-0:32.7.0.255": Value(230.1, "V"),
        "1-0:52.7.0.255": Value(231.2, "V"),
        "1-0:72.7.0.255": Value(232.3, "V"),
        "1-0:1.8.0.255": Value(1000.5, "kWh"),
        "1-0:2.8.0.255": Value(2.25, "kWh"),
        "1-0:3.8.0.255": Value(30.0, "kvarh"),
        "1-0:4.8.0.255": Value(40.0, "kvarh"),
        "1-0:14.7.0.255": Value(50.01, "Hz"),  # no amsreader field
    }
    reading = _reading(values, list="AIDON_V0001")
    raw = payloads.amsreader_payload(
        reading, payloads.readable_values(reading), name="house", received=RECEIVED, uptime_s=42
    )
    body = json.loads(raw)
    # amsreader's "JSON (classic)": device fields at the top, the meter's data in `data`.
    assert {k: v for k, v in body.items() if k != "data"} == {
        "id": "house",
        "name": "house",
        "up": 42,
        "t": int(METER_TIME.timestamp()),
    }
    assert body["data"] == {
        "P": 1247,
        "PO": 0,
        "Q": 10,
        "QO": 220,
        "I1": 1.5,
        "I2": 2.5,
        "I3": 3.5,
        "U1": 230.1,
        "U2": 231.2,
        "U3": 232.3,
        "tPI": 1000.5,
        "tPO": 2.25,
        "tQI": 30.0,
        "tQO": 40.0,
        "rtc": int(METER_TIME.timestamp()),
        "lv": "AIDON_V0001",
        "id": "7359992890941742",
        "type": "6841131BN243101040",
    }


def test_amsreader_units_are_the_firmwares() -> None:
    """W, var, A, V, kWh, kvarh and epoch seconds whatever the meter sent (decoder canonical units)."""
    units = {"P": "W", "PO": "W", "Q": "var", "QO": "var", "tPI": "kWh", "tPO": "kWh", "tQI": "kvarh", "tQO": "kvarh"}
    units |= {f"I{n}": "A" for n in (1, 2, 3)} | {f"U{n}": "V" for n in (1, 2, 3)}
    by_key = {v: k for k, v in payloads.AMSREADER_KEYS.items()}
    assert set(units) == set(by_key)
    expected_unit = {"power": "W", "reactive": "var", "current": "A", "voltage": "V"}
    for field, unit in units.items():
        key = by_key[field]
        if key.startswith("energy_reactive"):
            assert unit == "kvarh"
        elif key.startswith("energy"):
            assert unit == "kWh"
        else:
            assert expected_unit[key.split("_")[0]] == unit, (field, key)


def test_amsreader_list_1_and_naive_clock() -> None:
    """List 1 carries power only: no `lv`/`id`/`type`, as the firmware's list-1 message. A naive meter
    clock (Aidon) is local time: `rtc` is its true epoch (the zone inferred); `t` falls back to `received`."""
    reading = _reading({"1-0:1.7.0.255": Value(900, "W")}, meter_id=None, model=None, list=None, timestamp=None)
    body = json.loads(
        payloads.amsreader_payload(reading, {"power_import": 900}, name="m", received=RECEIVED, uptime_s=0)
    )
    assert body["data"] == {"P": 900} and body["t"] == int(RECEIVED.timestamp())
    naive = datetime(2026, 3, 1, 13, 0, 0)  # Oslo local time, one hour ahead of RECEIVED (UTC)
    reading = _reading({"1-0:1.7.0.255": Value(900, "W")}, timestamp=naive)
    body = json.loads(
        payloads.amsreader_payload(reading, {"power_import": 900}, name="m", received=RECEIVED, uptime_s=0)
    )
    assert body["data"]["rtc"] == int(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp())


def test_grid_power_is_import_minus_export_only_when_both_are_sent() -> None:
    both = _reading({"1-0:1.7.0.255": Value(200, "W"), "1-0:2.7.0.255": Value(1500, "W")})
    assert payloads.readable_values(both)[payloads.GRID_POWER_KEY] == -1300
    import_only = _reading({"1-0:1.7.0.255": Value(200, "W")})  # Norwegian list 1
    assert payloads.GRID_POWER_KEY not in payloads.readable_values(import_only)


def test_meter_time_is_always_aware() -> None:
    assert payloads.meter_time(_reading({}), RECEIVED) == METER_TIME  # an offset from the meter wins
    assert payloads.meter_time(_reading({}, timestamp=None), RECEIVED) is None


@pytest.mark.parametrize(
    ("wall", "received", "offset_minutes"),
    [
        # Oslo winter (+01:00) and summer (+02:00), the meter a few seconds either side of the host.
        (datetime(2026, 1, 15, 13, 0, 0), datetime(2026, 1, 15, 12, 0, 3, tzinfo=UTC), 60),
        (datetime(2026, 7, 1, 14, 0, 2), datetime(2026, 7, 1, 11, 59, 58, tzinfo=UTC), 120),
        # Across midnight and the new year, a received time in another zone, a half-hour zone.
        (datetime(2027, 1, 1, 0, 0, 1), datetime(2026, 12, 31, 23, 0, 0, tzinfo=UTC), 60),
        (datetime(2026, 3, 1, 13, 0, 0), datetime(2026, 3, 1, 7, 0, 0, tzinfo=timezone(timedelta(hours=-5))), 60),
        (datetime(2026, 3, 1, 17, 30, 0), datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC), 330),
        # A clock 5 minutes fast still gets its zone's offset.
        (datetime(2026, 3, 1, 13, 5, 0), datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC), 60),
    ],
)
def test_naive_meter_time_gets_the_offset_of_its_zone(wall: datetime, received: datetime, offset_minutes: int) -> None:
    """Aidon/Kaifa send local wall time without an offset: the offset comes from the receive time."""
    aware = payloads.meter_time(_reading({}, timestamp=wall), received)
    assert aware is not None
    assert aware.replace(tzinfo=None) == wall
    assert aware.utcoffset() == timedelta(minutes=offset_minutes)


def test_a_wildly_wrong_naive_clock_falls_back_to_the_host_zone() -> None:
    wall = datetime(2001, 1, 1, 0, 0, 0)  # a meter with a reset clock
    aware = payloads.meter_time(_reading({}, timestamp=wall), RECEIVED)
    assert aware is not None and aware.tzinfo is not None and aware.replace(tzinfo=None) == wall


def test_value_keys_cover_every_per_value_topic() -> None:
    assert set(payloads.READABLE_KEYS.values()) | {"gas"} <= payloads.VALUE_KEYS
    assert {payloads.GRID_POWER_KEY, payloads.METER_TIME_KEY} <= payloads.VALUE_KEYS
    assert payloads.COUNTER_KEYS <= payloads.VALUE_KEYS


def test_raw_payload_hex_and_reason() -> None:
    frame = UndecodedFrame("hdlc", "fcs_error", "FCS 1234 != 5678", bytes.fromhex("7ea0080102030405067e"))
    body = json.loads(payloads.undecoded_payload(frame, RECEIVED))
    assert body == {
        "ts": "2026-03-01T12:00:05.250000+00:00",
        "hex": "7EA0080102030405067E",
        "layer": "hdlc",
        "error": "fcs_error",
        "detail": "FCS 1234 != 5678",
    }
    cipher = UndecodedFrame(
        "cipher", "no_key", "encrypted", b"\xdb\x08", system_title="4b464d1020000001", invocation_counter=7
    )
    body = json.loads(payloads.undecoded_payload(cipher, RECEIVED))
    assert body["system_title"] == "4b464d1020000001" and body["invocation_counter"] == 7
    assert body["hex"] == "DB08"


def test_raw_payload_for_a_decoded_frame() -> None:
    body = json.loads(payloads.raw_payload(b"\x7e\x00", RECEIVED, "frame", None, None))
    assert body == {"ts": RECEIVED.isoformat(), "hex": "7E00", "layer": "frame", "error": None, "detail": None}


@pytest.mark.parametrize(("value", "text"), [(1247, b"1247"), (0, b"0"), (229.7, b"229.7"), (-5, b"-5"), (0.1, b"0.1")])
def test_value_payload_is_a_bare_json_number(value: int | float, text: bytes) -> None:
    payload = payloads.value_payload(value)
    assert payload == text
    assert json.loads(payload) == value


def test_no_status_strings_on_data_topics() -> None:
    """Data topics carry data only: availability lives on its own topics, never inside a reading."""
    reading = _reading({"1-0:1.7.0.255": Value(1, "W")})
    values = payloads.readable_values(reading)
    for payload in (payloads.state_payload(reading, RECEIVED, values), payloads.obis_payload(reading, RECEIVED)):
        body = json.loads(payload)
        assert isinstance(body, dict)
        assert not {"status", "online", "offline", "availability"} & set(body)
    for value in values.values():
        assert payloads.value_payload(value) not in (b"online", b"offline", b"")


def test_energy_counters_going_down_are_held_back_on_value_topics() -> None:
    """A glitchy 0 must not reach Home Assistant's total_increasing sensors; state/obis keep the truth."""
    from amsd.decoder import Decoder
    from amsd.pipeline import MeterOptions, MeterPipeline
    from amsd.publish import OutMessage

    sent: list[OutMessage] = []
    pipeline = MeterPipeline(MeterOptions(name="house", discovery_prefix=None), Decoder(), sent.append)
    for energy, power in ((100.0, 500), (0.0, 600), (100.5, 700), (99.0, 800)):
        pipeline.handle(_reading({"1-0:1.8.0.255": Value(energy, "kWh"), "1-0:1.7.0.255": Value(power, "W")}))

    def on(topic: str) -> list[bytes]:
        return [m.payload for m in sent if m.topic == topic]

    assert on("amsd/house/energy_import") == [b"100.0", b"100.5"]
    assert on("amsd/house/power_import") == [b"500", b"600", b"700", b"800"]  # only counters are guarded
    states = [json.loads(p)["energy_import"] for p in on("amsd/house/state")]
    assert states == [100.0, 0.0, 100.5, 99.0]
    assert all(not m.persistent for m in sent if m.topic.endswith(("energy_import", "power_import")))


def test_counter_keys_are_energies() -> None:
    assert "energy_import" in payloads.COUNTER_KEYS and "energy_export_t2" in payloads.COUNTER_KEYS
    assert "power_import" not in payloads.COUNTER_KEYS
