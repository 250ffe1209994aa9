"""MeterPipeline: bytes in, MQTT messages out (topics, raw frames, counters, availability, discovery).

Frames are built with amsd's own encoder (`amsd.sim.encode`) and simulator; the sink is a plain list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest

from amsd import __version__
from amsd.decoder import Decoder
from amsd.pipeline import ANNOUNCE_WITHOUT_ID_AFTER, MeterOptions, MeterPipeline
from amsd.publish import OutMessage
from amsd.sim import encode as enc
from amsd.sim.meters import DEMO_AUTHENTICATION_KEY, DEMO_ENCRYPTION_KEY, MeterSimulator

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
METER_ID = "7359990000000099"  # made up
UNIT_W, UNIT_VAR, UNIT_WH, UNIT_A, UNIT_V = 27, 29, 30, 33, 35

Register = tuple[str, enc.Data, int | None, int | None]


def _frame(registers: Iterable[Register], *, meter_id: str | None = METER_ID) -> bytes:
    """An Aidon-style HDLC push: array of {obis, value[, {scaler, unit}]}, optionally with the meter id."""
    entries = []
    if meter_id is not None:
        entries.append(enc.structure(enc.octet_string(enc.obis_code("0-0:96.1.0.255")), enc.visible_string(meter_id)))
    for obis, data, scaler, unit in registers:
        items = [enc.octet_string(enc.obis_code(obis)), data]
        if scaler is not None and unit is not None:
            items.append(enc.structure(enc.int8(scaler), enc.enum(unit)))
        entries.append(enc.structure(*items))
    apdu = enc.data_notification(enc.array(*entries), invoke_id=0x40000001, header="none")
    return enc.hdlc_frame(enc.llc(apdu))


def _power(watts: int) -> Register:
    return ("1-0:1.7.0.255", enc.uint32(watts), 0, UNIT_W)


def _energy(wh: int, obis: str = "1-0:1.8.0.255") -> Register:
    return (obis, enc.uint32(wh), 0, UNIT_WH)


class Sink:
    """The submit callable, recording every message in order."""

    def __init__(self) -> None:
        self.messages: list[OutMessage] = []

    def __call__(self, message: OutMessage) -> None:
        self.messages.append(message)

    def on(self, topic: str) -> list[OutMessage]:
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p in self.payloads(topic)]

    def discovery(self) -> list[OutMessage]:
        return [m for m in self.messages if m.topic.startswith("homeassistant/")]


def _pipeline(decoder: Decoder | None = None, **options: Any) -> tuple[MeterPipeline, Sink]:
    sink = Sink()
    opts = MeterOptions(name=options.pop("name", "house"), **options)
    return MeterPipeline(opts, decoder or Decoder(), sink, wall_clock=lambda: RECEIVED), sink


# ----------------------------------------------------------------------------------- readings


def test_one_reading_gives_state_obis_values_availability_and_discovery() -> None:
    pipeline, sink = _pipeline()
    pipeline.on_data(_frame([_power(1247), ("1-0:32.7.0.255", enc.uint16(2301), -1, UNIT_V), _energy(1234567)]))

    topics = [m.topic for m in sink.messages]
    assert topics[:5] == [
        "amsd/house/state",
        "amsd/house/obis",
        "amsd/house/power_import",
        "amsd/house/voltage_l1",
        "amsd/house/energy_import",
    ]
    assert "amsd/house/availability" in topics
    assert [m.topic for m in sink.discovery()] == [f"homeassistant/device/amsd_{METER_ID}/config"]
    assert "amsd/house/raw" not in topics  # decoded frames are not raw-published by default

    (state,) = sink.json("amsd/house/state")
    assert state == {
        "ts": None,  # this list carries no clock
        "received": RECEIVED.isoformat(),
        "meter_id": METER_ID,
        "model": None,
        "power_import": 1247,
        "voltage_l1": 230.1,
        "energy_import": 1234.567,
    }
    (obis,) = sink.json("amsd/house/obis")
    assert obis["values"]["1-0:1.7.0.255"] == {"value": 1247, "unit": "W"}
    assert obis["values"]["1-0:1.8.0.255"] == {"value": 1234.567, "unit": "kWh"}
    assert obis["values"]["0-0:96.1.0.255"] == {"value": METER_ID, "unit": None}
    assert sink.payloads("amsd/house/power_import") == [b"1247"]
    assert sink.payloads("amsd/house/energy_import") == [b"1234.567"]

    # Readings survive a broker outage (outbox); per-value topics are live-only and not retained by default.
    for message in sink.on("amsd/house/state") + sink.on("amsd/house/obis"):
        assert message.persistent and not message.retain
    for key in ("power_import", "voltage_l1", "energy_import"):
        (message,) = sink.on(f"amsd/house/{key}")
        # Counters are retained (hourly on Norwegian meters: a restarted HA gets them at once).
        assert not message.persistent and message.retain == (key == "energy_import")
    (availability,) = sink.on("amsd/house/availability")
    assert availability.payload == b"online" and availability.retain
    assert pipeline.counters["frames_ok"] == 1


def test_every_reading_in_order_from_a_chunked_stream() -> None:
    simulator = MeterSimulator("aidon-no", seed=3)
    frames = [simulator.next_frame() for _ in range(12)]
    stream = b"".join(f.data for f in frames)
    pipeline, sink = _pipeline()
    for start in range(0, len(stream), 7):  # a serial line delivers odd-sized chunks
        pipeline.on_data(stream[start : start + 7])

    states = sink.json("amsd/house/state")
    assert len(states) == len(frames) == pipeline.counters["frames_ok"]
    assert [s["power_import"] for s in states] == [f.expected["1-0:1.7.0.255"].value for f in frames]
    assert all(s["meter_id"] == frames[0].meter_id for s in states)
    assert len(sink.on("amsd/house/obis")) == len(frames)
    assert sum(v for k, v in pipeline.counters.items() if k != "frames_ok") == 0


def test_kamstrup_channel_one_codes_get_readable_keys() -> None:
    simulator = MeterSimulator("kamstrup-no", seed=1)
    frame = simulator.next_frame()
    pipeline, sink = _pipeline()
    pipeline.on_data(frame.data)
    (state,) = sink.json("amsd/house/state")
    assert state["power_import"] == frame.expected["1-1:1.7.0.255"].value
    assert state["voltage_l1"] == frame.expected["1-1:32.7.0.255"].value
    assert state["energy_import"] == frame.expected["1-1:1.8.0.255"].value
    assert state["meter_id"] == frame.meter_id


def test_encrypted_meter_with_keys() -> None:
    simulator = MeterSimulator("lg-e450-ch", seed=1)
    decoder = Decoder(DEMO_ENCRYPTION_KEY, DEMO_AUTHENTICATION_KEY)
    pipeline, sink = _pipeline(decoder)
    for _ in range(3):
        pipeline.on_data(simulator.next_frame().data)
    assert pipeline.counters["frames_ok"] == 3 and pipeline.counters["decrypt_errors"] == 0
    assert len(sink.on("amsd/house/state")) == 3


def test_dsmr_gas_becomes_a_number_key() -> None:
    simulator = MeterSimulator("dsmr5", seed=1)
    frame = simulator.next_frame()
    pipeline, sink = _pipeline()
    pipeline.on_data(frame.data)
    (state,) = sink.json("amsd/house/state")
    gas = frame.expected["0-1:24.2.1.255"].value
    assert isinstance(gas, list)
    assert state["gas"] == gas[-1]
    assert sink.payloads("amsd/house/gas") == [str(gas[-1]).encode()]


def test_amsreader_payload_format() -> None:
    pipeline, sink = _pipeline(payload_format="amsreader")
    pipeline.on_data(_frame([_power(900), _energy(5000)]))
    (state,) = sink.json("amsd/house/state")
    assert state["data"] == {"P": 900, "tPI": 5.0, "id": METER_ID}  # amsreader's classic `data` object
    assert state["id"] == state["name"] == "house" and state["t"] == int(RECEIVED.timestamp())
    assert len(sink.on("amsd/house/obis")) == 1  # the full payload is still there


def test_retained_values_and_custom_prefix() -> None:
    pipeline, sink = _pipeline(topic_prefix="home/meters", name="garage", retain_values=True)
    pipeline.on_data(_frame([_power(5)]))
    (value,) = sink.on("home/meters/garage/power_import")
    assert value.retain and not value.persistent
    assert sink.on("home/meters/garage/state")


# ----------------------------------------------------------------------------------- raw frames, counters


def test_bad_crc_is_published_raw_and_counted() -> None:
    frame = bytearray(_frame([_power(1)]))
    frame[-5] ^= 0x55  # inside the information field: the FCS no longer matches
    pipeline, sink = _pipeline()
    pipeline.on_data(bytes(frame))

    assert not sink.on("amsd/house/state")
    (raw,) = sink.json("amsd/house/raw")
    assert raw["hex"] == bytes(frame).hex().upper()
    assert raw["layer"] == "hdlc" and raw["error"] == "fcs_error" and raw["detail"]
    assert raw["ts"] == RECEIVED.isoformat()
    assert pipeline.counters["crc_errors"] == 1 and pipeline.counters["frames_ok"] == 0
    (message,) = sink.on("amsd/house/raw")
    assert message.persistent  # raw frames are evidence for bug reports: kept through outages
    assert not sink.on("amsd/house/availability")  # a bad frame does not say the meter is there


def test_missing_and_wrong_keys_are_decrypt_errors() -> None:
    simulator = MeterSimulator("lg-e450-ch", seed=1)
    frame = simulator.next_frame()

    pipeline, sink = _pipeline(Decoder())
    pipeline.on_data(frame.data)
    (raw,) = sink.json("amsd/house/raw")
    assert raw["layer"] == "cipher" and raw["error"] == "no_key"
    assert raw["system_title"] and raw["invocation_counter"] == frame.invocation_counter
    assert pipeline.counters["decrypt_errors"] == 1

    pipeline, sink = _pipeline(Decoder(bytes(16), DEMO_AUTHENTICATION_KEY))
    pipeline.on_data(frame.data)
    (raw,) = sink.json("amsd/house/raw")
    assert raw["error"] == "wrong_key"
    assert DEMO_ENCRYPTION_KEY.hex() not in json.dumps(raw).lower()  # the key never reaches MQTT
    assert pipeline.counters["decrypt_errors"] == 1 and pipeline.counters["frames_ok"] == 0


def test_cut_off_frame_at_the_end_is_reported_on_flush() -> None:
    frame = _frame([_power(1)])
    pipeline, sink = _pipeline()
    pipeline.on_data(frame + frame[:20])
    assert len(sink.on("amsd/house/state")) == 1 and not sink.on("amsd/house/raw")
    pipeline.flush()
    (raw,) = sink.json("amsd/house/raw")
    assert raw["error"] == "truncated" and raw["hex"] == frame[:20].hex().upper()
    assert pipeline.counters["truncated"] == 1


def test_publish_raw_all_sends_every_frame() -> None:
    good = _frame([_power(7)])
    bad = bytearray(good)
    bad[-5] ^= 0x01
    pipeline, sink = _pipeline(publish_raw="all")
    pipeline.on_data(good + bytes(bad) + good)

    raws = sink.json("amsd/house/raw")
    assert [r["error"] for r in raws] == [None, "fcs_error", None]
    assert [r["hex"] for r in raws] == [good.hex().upper(), bytes(bad).hex().upper(), good.hex().upper()]
    assert raws[0]["layer"] == "frame" and raws[0]["detail"] is None
    # The raw message follows its reading, so a subscriber sees them together.
    topics = [m.topic for m in sink.messages if m.topic in ("amsd/house/state", "amsd/house/raw")]
    assert topics == ["amsd/house/state", "amsd/house/raw", "amsd/house/raw", "amsd/house/state", "amsd/house/raw"]


def test_diagnostics_counters_and_publisher_stats() -> None:
    pipeline, _ = _pipeline(discovery_prefix=None)
    good = _frame([_power(1)])
    bad = bytearray(good)
    bad[-5] ^= 0x01
    pipeline.on_state("open", None)
    pipeline.on_data(good + bytes(bad) + good)
    body = pipeline.diagnostics({"dropped": 3, "outbox_depth": 12, "published": 99})
    assert body["frames_ok"] == 2 and body["crc_errors"] == 1 and body["decrypt_errors"] == 0
    assert body["unknown"] == 0
    assert body["dropped"] == 3 and body["outbox_depth"] == 12
    assert body["serial_state"] == "open"
    assert isinstance(body["last_frame_age_s"], float) and 0 <= body["last_frame_age_s"] < 60
    message = pipeline.diagnostics_message({"dropped": 0, "outbox_depth": 0})
    assert message.topic == "amsd/house/diagnostics" and message.retain
    assert json.loads(message.payload)["frames_ok"] == 2

    fresh, _ = _pipeline()
    assert fresh.diagnostics()["last_frame_age_s"] is None  # no frame yet: no made-up age


# ----------------------------------------------------------------------------------- availability


def test_availability_changes_only() -> None:
    pipeline, sink = _pipeline(discovery_prefix=None)
    changes: list[bool | None] = []
    pipeline.on_change = lambda: changes.append(pipeline.available)
    frame = _frame([_power(1)])

    pipeline.on_state("open", None)
    pipeline.on_data(frame)
    pipeline.on_data(frame)  # still online: nothing new
    pipeline.on_silent(True)
    pipeline.on_silent(True)
    pipeline.on_data(frame)
    pipeline.on_state("reconnecting", "device unplugged")
    pipeline.on_state("reconnecting", "device unplugged")
    pipeline.on_state("open", None)  # the port is back, but only a frame says the meter is
    pipeline.on_data(frame)

    availability = sink.on("amsd/house/availability")
    assert [m.payload for m in availability] == [b"online", b"offline", b"online", b"offline", b"online"]
    assert all(m.retain for m in availability)
    assert pipeline.serial_state == "open"
    assert changes and changes[-1] is True
    assert pipeline.availability_message().payload == b"online"


def test_serial_detail_appears_in_diagnostics() -> None:
    pipeline, _ = _pipeline(discovery_prefix=None)
    pipeline.on_state("reconnecting", "no such device")
    body = pipeline.diagnostics()
    assert body["serial_state"] == "reconnecting" and body["serial_detail"] == "no such device"
    assert pipeline.available is False


# ----------------------------------------------------------------------------------- counters going down


def test_energy_counters_that_go_down_are_held_back_on_value_topics_only() -> None:
    pipeline, sink = _pipeline()
    readings = [(100_000, 5_000), (0, 5_100), (100_500, 5_050), (99_000, 5_200)]  # (import Wh, export Wh)
    for imported, exported in readings:
        pipeline.on_data(_frame([_power(1), _energy(imported), _energy(exported, "1-0:2.8.0.255")]))

    assert sink.payloads("amsd/house/energy_import") == [b"100.0", b"100.5"]
    assert sink.payloads("amsd/house/energy_export") == [b"5.0", b"5.1", b"5.2"]
    assert sink.payloads("amsd/house/power_import") == [b"1"] * 4  # only counters are guarded
    # state and obis carry exactly what the meter sent, glitch included.
    assert [s["energy_import"] for s in sink.json("amsd/house/state")] == [100.0, 0.0, 100.5, 99.0]
    assert [o["values"]["1-0:1.8.0.255"]["value"] for o in sink.json("amsd/house/obis")] == [100.0, 0.0, 100.5, 99.0]


# ----------------------------------------------------------------------------------- Home Assistant discovery


def _discovery_payload(sink: Sink) -> dict[str, Any]:
    messages = sink.discovery()
    assert messages, "no discovery message"
    assert messages[-1].retain
    payload: dict[str, Any] = json.loads(messages[-1].payload)
    return payload


def _value_components(body: dict[str, Any]) -> set[str]:
    """Announced per-value sensors (the diagnostic entities are always there)."""
    return {key for key in body["components"] if not key.startswith("diagnostics_")}


def test_discovery_waits_for_the_meter_id() -> None:
    pipeline, sink = _pipeline()
    pipeline.on_data(_frame([_power(1)], meter_id=None))  # Aidon/Kaifa list 1: power only, no id
    pipeline.on_data(_frame([_power(2)], meter_id=None))
    assert not sink.discovery()
    assert len(sink.on("amsd/house/power_import")) == 2  # values flow meanwhile

    pipeline.on_data(_frame([_power(3), _energy(1000)]))
    (message,) = sink.discovery()
    assert message.topic == f"homeassistant/device/amsd_{METER_ID}/config"
    assert message.retain and message.persistent
    assert _value_components(_discovery_payload(sink)) == {"power_import", "energy_import"}


def test_discovery_shape() -> None:
    pipeline, sink = _pipeline(Decoder(), name="house")
    pipeline.on_data(
        _frame(
            [
                _power(1),
                ("1-0:3.7.0.255", enc.uint32(2), 0, UNIT_VAR),
                ("1-0:31.7.0.255", enc.int16(15), -1, UNIT_A),
                ("1-0:32.7.0.255", enc.uint16(2301), -1, UNIT_V),
                _energy(1000),
                _energy(500, "1-0:2.8.0.255"),
                ("1-0:3.8.0.255", enc.uint32(10), 0, 32),
            ]
        )
    )
    body = _discovery_payload(sink)
    ident = f"amsd_{METER_ID}"
    device = body["device"]
    assert device["identifiers"] == [ident]
    assert device["serial_number"] == METER_ID
    assert device["sw_version"] == __version__
    assert {"name", "manufacturer", "model"} <= set(device)
    assert body["origin"]["name"] == "amsd" and body["origin"]["sw_version"] == __version__
    assert body["availability"] == [{"topic": "amsd/status"}, {"topic": "amsd/house/availability"}]
    assert body["availability_mode"] == "all"
    assert body["qos"] == 1
    assert "object_id" not in json.dumps(body)  # removed from Home Assistant in 2026.4

    components = {key: body["components"][key] for key in _value_components(body)}
    assert set(components) == {
        "power_import",
        "reactive_import",
        "current_l1",
        "voltage_l1",
        "energy_import",
        "energy_export",
        "energy_reactive_import",
    }
    for key, component in components.items():
        assert component["platform"] == "sensor"
        assert component["unique_id"] == f"{ident}_{key}"
        assert component["default_entity_id"] == f"sensor.{ident}_{key}"
        assert component["state_topic"] == f"amsd/house/{key}"
        assert component["name"] and "house" not in component["name"]  # HA prefixes the device name
    power = components["power_import"]
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == ("power", "measurement", "W")
    assert power["expire_after"] > 0
    for key in ("energy_import", "energy_export"):
        energy = components[key]
        assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
            "energy",
            "total_increasing",
            "kWh",
        )
        assert "expire_after" not in energy  # a counter stays valid between hourly lists
    assert components["energy_reactive_import"]["unit_of_measurement"] == "kvarh"
    assert components["energy_reactive_import"]["state_class"] == "total_increasing"
    assert components["current_l1"]["unit_of_measurement"] == "A"
    assert components["voltage_l1"]["device_class"] == "voltage"
    # Every announced sensor has a per-value topic that the pipeline actually publishes.
    published = {m.topic for m in sink.messages}
    assert {c["state_topic"] for c in components.values()} <= published


def test_discovery_is_resent_only_when_new_keys_appear() -> None:
    pipeline, sink = _pipeline()
    pipeline.on_data(_frame([_power(1)]))
    pipeline.on_data(_frame([_power(2)]))
    assert len(sink.discovery()) == 1
    pipeline.on_data(_frame([_power(3), _energy(1000)]))  # list 3 adds counters
    assert len(sink.discovery()) == 2
    pipeline.on_data(_frame([_power(4)]))  # list 1 again: nothing removed, nothing re-sent
    assert len(sink.discovery()) == 2
    assert _value_components(_discovery_payload(sink)) == {"power_import", "energy_import"}
    again = pipeline.discovery_message()  # what the publisher re-sends when Home Assistant restarts
    assert again is not None and again.payload == sink.discovery()[-1].payload


def test_discovery_falls_back_to_the_name_for_meters_without_an_id() -> None:
    pipeline, sink = _pipeline(name="garage")
    for watts in range(ANNOUNCE_WITHOUT_ID_AFTER - 1):
        pipeline.on_data(_frame([_power(watts)], meter_id=None))
    assert not sink.discovery()
    pipeline.on_data(_frame([_power(99)], meter_id=None))
    (message,) = sink.discovery()
    assert message.topic == "homeassistant/device/amsd_garage/config"
    assert _discovery_payload(sink)["components"]["power_import"]["unique_id"] == "amsd_garage_power_import"


def test_no_discovery_when_disabled() -> None:
    pipeline, sink = _pipeline(discovery_prefix=None)
    pipeline.on_data(_frame([_power(1), _energy(5)]))
    assert not sink.discovery()
    assert pipeline.discovery_message() is None


@pytest.mark.parametrize("prefix", ["ha", "homeassistant"])
def test_discovery_prefix(prefix: str) -> None:
    pipeline, sink = _pipeline(discovery_prefix=prefix)
    pipeline.on_data(_frame([_power(1)]))
    topics = [m.topic for m in sink.messages if m.topic.endswith("/config")]
    assert topics == [f"{prefix}/device/amsd_{METER_ID}/config"]
