"""Home Assistant discovery: every payload amsd can send passes a schema written from HA's MQTT
documentation (tests/ha_schema.py), entities carry the classes the Energy dashboard needs, and
counters that glitch never reach their Home Assistant topics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from amsd import homeassistant, payloads
from amsd.decoder import Decoder
from amsd.pipeline import COUNTER_CONFIRMATIONS, MAX_COUNTER_RISE_PER_HOUR, MeterOptions, MeterPipeline
from amsd.publish import OutMessage
from amsd.sim import encode as enc
from amsd.sim.meters import DEMO_AUTHENTICATION_KEY, DEMO_ENCRYPTION_KEY, MeterSimulator, profile_names
from tests.ha_schema import validate_device_discovery

METER_ID = "7359990000000123"  # made up
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
UNIT_W, UNIT_WH = 27, 30


def _discover(keys: list[str], **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "meter_name": "house",
        "meter_id": METER_ID,
        "manufacturer": "Aidon",
        "model": "6525",
        "keys": keys,
        "topic_prefix": "amsd",
        "discovery_prefix": "homeassistant",
    }
    arguments.update(overrides)
    topic, raw = homeassistant.discovery(**arguments)
    ident = homeassistant.device_id(arguments["meter_id"], arguments["meter_name"])
    assert topic == f"{arguments['discovery_prefix']}/device/amsd_{ident}/config"
    body: dict[str, Any] = json.loads(raw)
    return body


ALL_KEYS = sorted(payloads.VALUE_KEYS)


# ----------------------------------------------------------------------------------- the schema itself


def test_the_schema_rejects_what_home_assistant_rejects() -> None:
    """The validator is only worth something if it fails bad payloads."""
    good = _discover(["power_import", "energy_import"])
    assert validate_device_discovery(good) == []

    def broken(change: Any) -> list[str]:
        body = json.loads(json.dumps(good))
        change(body)
        return validate_device_discovery(body)

    assert broken(lambda b: b.pop("origin"))
    assert broken(lambda b: b.pop("device"))
    assert broken(lambda b: b["device"].pop("identifiers"))
    assert broken(lambda b: b["components"]["power_import"].update(object_id="x"))
    assert broken(lambda b: b["components"]["power_import"].pop("default_entity_id"))
    assert broken(lambda b: b["components"]["power_import"].update(unit_of_measurement="kWh"))
    assert broken(lambda b: b["components"]["power_import"].update(state_class="total_increasing"))
    assert broken(lambda b: b["components"]["energy_import"].update(state_class="measurement"))
    assert broken(lambda b: b["components"]["energy_import"].update(expire_after=60))
    assert broken(lambda b: b["components"]["energy_import"].update(device_class="energi"))
    assert broken(lambda b: b["components"]["energy_import"].update(state_topic="amsd/+/x"))
    assert broken(lambda b: b["components"]["diagnostics_frames_ok"].update(entity_category="debug"))
    assert broken(lambda b: b.update(availability_mode="some"))


# ----------------------------------------------------------------------------------- payloads


def test_every_key_amsd_can_publish_gives_a_valid_component() -> None:
    body = _discover(ALL_KEYS)
    assert validate_device_discovery(body) == []
    assert set(payloads.VALUE_KEYS) <= set(body["components"])


@pytest.mark.parametrize(
    ("key", "device_class", "unit", "state_class"),
    [
        ("power_import", "power", "W", "measurement"),
        ("power_export", "power", "W", "measurement"),
        ("grid_power", "power", "W", "measurement"),
        ("power_import_l2", "power", "W", "measurement"),
        ("reactive_import", "reactive_power", "var", "measurement"),
        ("reactive_export", "reactive_power", "var", "measurement"),
        ("apparent_import", "apparent_power", "VA", "measurement"),
        ("energy_import", "energy", "kWh", "total_increasing"),
        ("energy_export_t2", "energy", "kWh", "total_increasing"),
        ("energy_reactive_import", "reactive_energy", "kvarh", "total_increasing"),
        ("energy_reactive_export", "reactive_energy", "kvarh", "total_increasing"),
        ("voltage_l3", "voltage", "V", "measurement"),
        ("current_l1", "current", "A", "measurement"),
        ("current_neutral", "current", "A", "measurement"),
        ("power_factor_l1", "power_factor", None, "measurement"),
        ("frequency", "frequency", "Hz", "measurement"),
        ("gas", "gas", "m³", "total_increasing"),
        ("meter_time", "timestamp", None, None),
    ],
)
def test_classes_units_and_expiry(key: str, device_class: str, unit: str | None, state_class: str | None) -> None:
    component = _discover([key])["components"][key]
    assert component.get("device_class") == device_class
    assert component.get("unit_of_measurement") == unit
    assert component.get("state_class") == state_class
    assert component["state_topic"] == f"amsd/house/{key}"
    if state_class == "measurement":
        # A minute: several list-1/list-2 periods (2-10 s), so lost frames do not flap the entity.
        assert component["expire_after"] == homeassistant.EXPIRE_AFTER_S == 60
    else:
        # Hourly counters (Norwegian list 3) and the clock must not turn unavailable within the hour.
        assert "expire_after" not in component


def test_device_origin_availability_and_ids() -> None:
    body = _discover(["power_import"], meter_name="house")
    assert body["device"]["serial_number"] == METER_ID
    assert body["device"]["identifiers"] == [f"amsd_{METER_ID}"]
    assert (body["device"]["manufacturer"], body["device"]["model"]) == ("Aidon", "6525")
    assert body["origin"]["name"] == "amsd"
    assert body["availability"] == [{"topic": "amsd/status"}, {"topic": "amsd/house/availability"}]
    assert body["availability_mode"] == "all"
    component = body["components"]["power_import"]
    assert component["unique_id"] == f"amsd_{METER_ID}_power_import"
    assert component["default_entity_id"] == f"sensor.amsd_{METER_ID}_power_import"
    assert "object_id" not in json.dumps(body)


def test_diagnostics_are_diagnostic_entities_visible_while_the_meter_is_offline() -> None:
    components = _discover(["power_import"], topic_prefix="home/ams")["components"]
    diagnostics = {k: c for k, c in components.items() if k.startswith("diagnostics_")}
    fields = {k.removeprefix("diagnostics_") for k in diagnostics}
    assert {"frames_ok", "crc_errors", "decrypt_errors", "counter_glitches", "serial_state"} <= fields
    for key, component in diagnostics.items():
        assert component["entity_category"] == "diagnostic"
        assert component["state_topic"] == "home/ams/house/diagnostics"
        assert component["value_template"] == f"{{{{ value_json.{key.removeprefix('diagnostics_')} }}}}"
        # Only amsd's own status: the line state matters most when the meter is offline.
        assert component["availability"] == [{"topic": "home/ams/status"}]
    # Every field read by a template exists in the diagnostics the pipeline publishes.
    pipeline = MeterPipeline(MeterOptions(name="house"), Decoder(), lambda _: None)
    published = pipeline.diagnostics({"dropped": 0, "live_values_skipped": 0, "outbox_depth": 0})
    assert fields <= set(published)


def test_meter_without_identity_still_gives_a_valid_device() -> None:
    body = _discover(["power_import"], meter_id=None, manufacturer=None, model=None, meter_name="gar.age")
    assert validate_device_discovery(body) == []
    assert "serial_number" not in body["device"]  # HA rejects null
    assert body["components"]["power_import"]["default_entity_id"] == "sensor.amsd_gar_age_power_import"


# ----------------------------------------------------------------------------------- through the pipeline


class Sink(list[OutMessage]):
    def on(self, topic: str) -> list[bytes]:
        return [m.payload for m in self if m.topic == topic]


def _pipeline(clock: list[datetime], decoder: Decoder | None = None, **options: Any) -> tuple[MeterPipeline, Sink]:
    sink = Sink()
    pipeline = MeterPipeline(
        MeterOptions(name="house", **options), decoder or Decoder(), sink.append, wall_clock=lambda: clock[0]
    )
    return pipeline, sink


@pytest.mark.parametrize("profile", profile_names())
def test_every_simulated_meter_announces_a_valid_device_with_published_topics(profile: str) -> None:
    simulator = MeterSimulator(profile, seed=3, start=START)
    clock = [START]
    pipeline, sink = _pipeline(clock, Decoder(DEMO_ENCRYPTION_KEY, DEMO_AUTHENTICATION_KEY))
    for _ in range(12):
        frame = simulator.next_frame()
        clock[0] = START + timedelta(seconds=frame.at)
        pipeline.on_data(frame.data)
    configs = [m for m in sink if m.topic.startswith("homeassistant/")]
    assert configs and all(m.retain for m in configs)
    body = json.loads(configs[-1].payload)
    assert validate_device_discovery(body) == []
    # Named by the serial the meter sends; meters that send none fall back to the configured name.
    decoded_ids = {json.loads(p)["meter_id"] for p in sink.on("amsd/house/state")} - {None}
    ident = decoded_ids.pop() if decoded_ids else "house"
    assert configs[-1].topic == f"homeassistant/device/amsd_{ident}/config"
    values = {k: c for k, c in body["components"].items() if not k.startswith("diagnostics_")}
    assert "power_import" in values and any(c.get("device_class") == "energy" for c in values.values())
    published = {m.topic for m in sink}
    for key, component in values.items():
        assert component["state_topic"] in published, key
    # The clock entity carries an ISO 8601 time with an offset, as a timestamp sensor needs.
    if "meter_time" in values:
        stamp = sink.on("amsd/house/meter_time")[-1].decode()
        assert datetime.fromisoformat(stamp).tzinfo is not None


def test_config_grows_when_a_new_list_reveals_new_values() -> None:
    simulator = MeterSimulator("aidon-no", seed=3, start=START)
    frames = [simulator.next_frame() for _ in range(6)]
    list2 = next(f for f in frames if f.list_name == "list2")
    list3 = frames[0]
    assert list3.list_name == "list3"
    pipeline, sink = _pipeline([START])
    pipeline.on_data(list2.data)
    first = [m for m in sink if m.topic.startswith("homeassistant/")]
    pipeline.on_data(list3.data)
    configs = [m for m in sink if m.topic.startswith("homeassistant/")]
    assert len(first) == 1 and len(configs) == 2
    before, after = (set(json.loads(m.payload)["components"]) for m in configs)
    assert before < after
    assert {"energy_import", "energy_reactive_export", "meter_time"} <= after - before


# ----------------------------------------------------------------------------------- counters never glitch


def _counter_frame(wh: int, watts: int = 500) -> bytes:
    entries = [
        enc.structure(enc.octet_string(enc.obis_code("0-0:96.1.0.255")), enc.visible_string(METER_ID)),
        enc.structure(
            enc.octet_string(enc.obis_code("1-0:1.7.0.255")),
            enc.uint32(watts),
            enc.structure(enc.int8(0), enc.enum(UNIT_W)),
        ),
        enc.structure(
            enc.octet_string(enc.obis_code("1-0:1.8.0.255")),
            enc.uint32(wh),
            enc.structure(enc.int8(0), enc.enum(UNIT_WH)),
        ),
    ]
    apdu = enc.data_notification(enc.array(*entries), invoke_id=0x40000001, header="none")
    return enc.hdlc_frame(enc.llc(apdu))


def _feed(pipeline: MeterPipeline, clock: list[datetime], readings: list[tuple[float, int]]) -> None:
    """(hours since START, counter in Wh) pairs."""
    for hours, wh in readings:
        clock[0] = START + timedelta(hours=hours)
        pipeline.on_data(_counter_frame(wh))


def test_a_counter_that_drops_or_jumps_is_held_back_counted_and_sent_raw() -> None:
    clock = [START]
    pipeline, sink = _pipeline(clock)
    hourly = 1  # kWh per hour in this house
    _feed(
        pipeline,
        clock,
        [
            (0, 100_000),
            (1, 101_000),
            (2, 0),  # a glitchy zero
            (3, 103_000),
            (4, 103_000 + 5_000_000),  # a garbled high byte: 5 MWh in an hour
            (5, 105_000),
        ],
    )
    assert sink.on("amsd/house/energy_import") == [b"100.0", b"101.0", b"103.0", b"105.0"]
    assert hourly  # every accepted step is a plausible hour of consumption
    # state and obis still carry exactly what the meter sent.
    states = [json.loads(p)["energy_import"] for p in sink.on("amsd/house/state")]
    assert states == [100.0, 101.0, 0.0, 103.0, 5103.0, 105.0]
    assert len(sink.on("amsd/house/obis")) == 6
    assert pipeline.counters["counter_glitches"] == 2
    assert pipeline.diagnostics()["counter_glitches"] == 2
    raws = [json.loads(p) for p in sink.on("amsd/house/raw")]
    assert [r["error"] for r in raws] == ["counter_glitch", "counter_glitch"]
    assert "energy_import 0.0 after 101.0 (decrease)" in raws[0]["detail"]
    assert "(jump)" in raws[1]["detail"]
    assert raws[0]["hex"] == _counter_frame(0).hex().upper()
    # Power is not a counter: it is never held back.
    assert len(sink.on("amsd/house/power_import")) == 6


def test_the_jump_bound_grows_with_elapsed_time() -> None:
    clock = [START]
    pipeline, sink = _pipeline(clock)
    bound_wh = int(MAX_COUNTER_RISE_PER_HOUR * 1000)
    # After 10 hours without frames (line down), 9 MWh more is possible: published.
    _feed(pipeline, clock, [(0, 1_000_000), (10, 1_000_000 + 9 * bound_wh)])
    assert len(sink.on("amsd/house/energy_import")) == 2
    # Two seconds later, 2 kWh more is not (1 MW for 2 s is 0.56 kWh, plus 1 kWh slack).
    _feed(pipeline, clock, [(10 + 2 / 3600, 1_000_000 + 9 * bound_wh + 2_000)])
    assert len(sink.on("amsd/house/energy_import")) == 2
    assert pipeline.counters["counter_glitches"] == 1


def test_a_real_reset_is_accepted_after_consistent_readings() -> None:
    """A meter swap starts from a lower counter: after COUNTER_CONFIRMATIONS plausible readings from
    the new baseline, Home Assistant gets it (total_increasing then records a reset, as it should)."""
    clock = [START]
    pipeline, sink = _pipeline(clock)
    _feed(pipeline, clock, [(0, 500_000)])
    swapped = [(1 + n, 10_000 + 1_000 * n) for n in range(COUNTER_CONFIRMATIONS + 1)]
    _feed(pipeline, clock, swapped)
    published = sink.on("amsd/house/energy_import")
    assert published[0] == b"500.0"
    # The first readings of the new meter are held back, then it is confirmed and flows.
    expected_after = [str(wh / 1000).encode() for _, wh in swapped[COUNTER_CONFIRMATIONS - 1 :]]
    assert published[1:] == expected_after
    assert pipeline.counters["counter_glitches"] == COUNTER_CONFIRMATIONS - 1


def test_an_isolated_glitch_does_not_become_a_baseline() -> None:
    clock = [START]
    pipeline, sink = _pipeline(clock)
    _feed(pipeline, clock, [(0, 100_000), (1, 0), (2, 102_000), (3, 0), (4, 104_000), (5, 0), (6, 106_000)])
    assert sink.on("amsd/house/energy_import") == [b"100.0", b"102.0", b"104.0", b"106.0"]
    assert pipeline.counters["counter_glitches"] == 3


def test_repeated_counters_are_fine() -> None:
    """Aidon repeats last hour's counters in some list 3 frames: equal is not a glitch."""
    clock = [START]
    pipeline, sink = _pipeline(clock)
    _feed(pipeline, clock, [(0, 100_000), (0.001, 100_000), (1, 101_000)])
    assert len(sink.on("amsd/house/energy_import")) == 3
    assert pipeline.counters["counter_glitches"] == 0 and not sink.on("amsd/house/raw")


def test_grid_power_and_meter_clock_topics() -> None:
    simulator = MeterSimulator("kaifa-no", seed=5, start=START)
    pipeline, sink = _pipeline([START])
    frames = [simulator.next_frame() for _ in range(6)]
    for frame in frames:
        pipeline.on_data(frame.data)
    grid = [float(p) for p in sink.on("amsd/house/grid_power")]
    with_export = [f for f in frames if "1-0:2.7.0.255" in f.expected]
    assert len(grid) == len(with_export) > 0  # list 1 (import only) gives no grid power
    for value, frame in zip(grid, with_export, strict=True):
        imported, exported = frame.expected["1-0:1.7.0.255"].value, frame.expected["1-0:2.7.0.255"].value
        assert isinstance(imported, int) and isinstance(exported, int)
        assert value == imported - exported
    stamps = [datetime.fromisoformat(p.decode()) for p in sink.on("amsd/house/meter_time")]
    assert len(stamps) == len(frames)  # Kaifa sends its clock in every header
    assert all(s.tzinfo is not None for s in stamps)
    assert stamps == [f.meter_time for f in frames]  # the right instant, though Kaifa sends no offset


def test_counters_and_clock_are_retained_live_values_follow_the_option() -> None:
    """Norwegian counters come hourly: retained, a restarted Home Assistant shows them at once."""
    simulator = MeterSimulator("kaifa-no", seed=5, start=START)
    frame = simulator.next_frame()  # list 3
    for retain_values in (False, True):
        pipeline, sink = _pipeline([START + timedelta(seconds=1)], retain_values=retain_values)
        pipeline.on_data(frame.data)
        by_topic = {m.topic: m for m in sink}
        assert by_topic["amsd/house/energy_import"].retain and by_topic["amsd/house/meter_time"].retain
        assert by_topic["amsd/house/power_import"].retain is retain_values
        assert not by_topic["amsd/house/energy_import"].persistent  # live only: no outbox backlog
