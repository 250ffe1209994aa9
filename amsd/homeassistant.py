"""Home Assistant device-based MQTT discovery (`homeassistant/device/<id>/config`, HA 2024.11+)."""

from __future__ import annotations

import re
from typing import Any, Final

from amsd import __version__
from amsd.payloads import COUNTER_KEYS, GRID_POWER_KEY, METER_TIME_KEY, dumps

# Instantaneous values (power, current, voltage...) become "unavailable" in Home Assistant when no
# update came for this long. Meters push them every 1-10 s (Norwegian list 1 every 2-2.5 s, list 2
# every 10 s, DSMR every 1-10 s), so a minute rides out several lost frames without flapping, yet
# shows a stuck line within a minute. Counters and the meter clock never expire: Norwegian meters
# send them once an hour, and a dead line is already shown by the meter's availability topic.
EXPIRE_AFTER_S: Final = 60

# key -> (name, device_class, unit, state_class)
_SENSORS: Final[dict[str, tuple[str, str | None, str | None, str | None]]] = {
    "power_import": ("Active power import", "power", "W", "measurement"),
    "power_export": ("Active power export", "power", "W", "measurement"),
    "reactive_import": ("Reactive power import", "reactive_power", "var", "measurement"),
    "reactive_export": ("Reactive power export", "reactive_power", "var", "measurement"),
    "apparent_import": ("Apparent power import", "apparent_power", "VA", "measurement"),
    "apparent_export": ("Apparent power export", "apparent_power", "VA", "measurement"),
    "power_factor": ("Power factor", "power_factor", None, "measurement"),
    "frequency": ("Frequency", "frequency", "Hz", "measurement"),
    "power_import_quarter_hour_average": ("Quarter-hour average import", "power", "W", "measurement"),
    "current_neutral": ("Current neutral", "current", "A", "measurement"),
    "gas": ("Gas", "gas", "m³", "total_increasing"),
    GRID_POWER_KEY: ("Grid power", "power", "W", "measurement"),
    METER_TIME_KEY: ("Meter clock", "timestamp", None, None),
}

# Fields of the retained `diagnostics` JSON shown as diagnostic entities:
# field -> (name, device_class, unit, state_class).
_DIAGNOSTICS: Final[dict[str, tuple[str, str | None, str | None, str | None]]] = {
    "frames_ok": ("Frames decoded", None, None, "total_increasing"),
    "crc_errors": ("CRC errors", None, None, "total_increasing"),
    "decrypt_errors": ("Decryption errors", None, None, "total_increasing"),
    "unknown": ("Unknown frames", None, None, "total_increasing"),
    "counter_glitches": ("Counter glitches", None, None, "total_increasing"),
    "dropped": ("Readings dropped", None, None, "total_increasing"),
    "serial_state": ("Line state", None, None, None),
    "last_frame_age_s": ("Last frame age", "duration", "s", "measurement"),
}


def _describe(key: str) -> tuple[str, str | None, str | None, str | None]:
    if key in _SENSORS:
        return _SENSORS[key]
    label = key.replace("_", " ").replace(" l1", " L1").replace(" l2", " L2").replace(" l3", " L3")
    label = label[:1].upper() + label[1:]
    if key.startswith("current"):
        return label, "current", "A", "measurement"
    if key.startswith("voltage"):
        return label, "voltage", "V", "measurement"
    if key.startswith("power_factor"):
        return label, "power_factor", None, "measurement"
    if key.startswith("power_"):
        return label, "power", "W", "measurement"
    if key in COUNTER_KEYS:
        if "reactive" in key:
            return label, "reactive_energy", "kvarh", "total_increasing"
        return label, "energy", "kWh", "total_increasing"
    return label, None, None, "measurement"


def device_id(meter_id: str | None, meter_name: str) -> str:
    """A stable id for topics and unique ids: the meter's serial, else the configured name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", meter_id or meter_name)


def _sensor(
    ident: str, key: str, name: str, device_class: str | None, unit: str | None, state_class: str | None
) -> dict[str, Any]:
    component: dict[str, Any] = {
        "platform": "sensor",
        "name": name,
        "unique_id": f"amsd_{ident}_{key}",
        "default_entity_id": f"sensor.amsd_{ident}_{key}".lower(),
    }
    if device_class:
        component["device_class"] = device_class
    if unit:
        component["unit_of_measurement"] = unit
    if state_class:
        component["state_class"] = state_class
    return component


def diagnostics_components(topic_prefix: str, meter_name: str, ident: str) -> dict[str, dict[str, Any]]:
    """Diagnostic entities read from the retained `diagnostics` JSON. Their availability follows amsd
    alone: the line state must stay visible exactly when the meter is offline."""
    components: dict[str, dict[str, Any]] = {}
    for field_name, (name, device_class, unit, state_class) in _DIAGNOSTICS.items():
        key = f"diagnostics_{field_name}"
        component = _sensor(ident, key, name, device_class, unit, state_class)
        component["state_topic"] = f"{topic_prefix}/{meter_name}/diagnostics"
        component["value_template"] = f"{{{{ value_json.{field_name} }}}}"
        component["entity_category"] = "diagnostic"
        component["availability"] = [{"topic": f"{topic_prefix}/status"}]
        components[key] = component
    return components


# Entities read from the retained `accounting` JSON ([accounting] on):
# key -> (name, JSON path, device_class, unit, state_class, JSON path of the period start or None).
# Period energies are `total` with last_reset, not total_increasing: a corrected estimate may go
# down within the period, which total_increasing would take for a reset and count twice.
_ACCOUNTING: Final[dict[str, tuple[str, str, str | None, str | None, str | None, str | None]]] = {
    "hour_import": ("Import this hour", "hour.import_kwh", "energy", "kWh", "total", "hour.start"),
    "hour_export": ("Export this hour", "hour.export_kwh", "energy", "kWh", "total", "hour.start"),
    "day_import": ("Import today", "day.import_kwh", "energy", "kWh", "total", "day.start"),
    "day_export": ("Export today", "day.export_kwh", "energy", "kWh", "total", "day.start"),
    "month_import": ("Import this month", "month.import_kwh", "energy", "kWh", "total", "month.start"),
    "month_export": ("Export this month", "month.export_kwh", "energy", "kWh", "total", "month.start"),
    # Not energy totals (HA allows no `measurement` energy sensors): plain kWh measurements.
    "peak_average": ("Capacity peak hours average", "capacity.average_kwh", None, "kWh", "measurement", None),
    "step": ("Capacity step", "capacity.step", None, None, "measurement", None),
    "threshold": ("Capacity threshold this hour", "capacity.threshold_kwh", None, "kWh", "measurement", None),
    "projected_hour": ("Projected import this hour", "capacity.projected_hour_kwh", None, "kWh", "measurement", None),
}


def accounting_components(topic_prefix: str, meter_name: str, ident: str) -> dict[str, dict[str, Any]]:
    """Entities for `<prefix>/<meter>/accounting` (docs/accounting.md)."""
    components: dict[str, dict[str, Any]] = {}
    for field_name, (name, path, device_class, unit, state_class, start) in _ACCOUNTING.items():
        key = f"accounting_{field_name}"
        component = _sensor(ident, key, name, device_class, unit, state_class)
        component["state_topic"] = f"{topic_prefix}/{meter_name}/accounting"
        component["value_template"] = f"{{{{ value_json.{path} }}}}"
        if start is not None:
            component["last_reset_value_template"] = f"{{{{ value_json.{start} }}}}"
        if unit == "kWh":
            component["suggested_display_precision"] = 2
        components[key] = component
    return components


def discovery(
    *,
    meter_name: str,
    meter_id: str | None,
    manufacturer: str | None,
    model: str | None,
    keys: list[str],
    topic_prefix: str,
    discovery_prefix: str,
    accounting: bool = False,
) -> tuple[str, bytes]:
    """(topic, retained payload) announcing one meter with a sensor per readable key it sends."""
    ident = device_id(meter_id, meter_name)
    components: dict[str, Any] = {}
    for key in keys:
        name, device_class, unit, state_class = _describe(key)
        component = _sensor(ident, key, name, device_class, unit, state_class)
        component["state_topic"] = f"{topic_prefix}/{meter_name}/{key}"
        if state_class == "measurement":
            component["expire_after"] = EXPIRE_AFTER_S
        components[key] = component
    components.update(diagnostics_components(topic_prefix, meter_name, ident))
    if accounting:
        components.update(accounting_components(topic_prefix, meter_name, ident))
    device: dict[str, Any] = {
        "identifiers": [f"amsd_{ident}"],
        "name": f"Electricity meter {meter_name}",
        "manufacturer": manufacturer or "unknown",
        "model": model or "unknown",
        "sw_version": __version__,
    }
    if meter_id:
        # HA rejects a null serial number: meters that never send their id (some lists) go without.
        device["serial_number"] = meter_id
    payload = {
        "device": device,
        "origin": {"name": "amsd", "sw_version": __version__},
        "availability": [
            {"topic": f"{topic_prefix}/status"},
            {"topic": f"{topic_prefix}/{meter_name}/availability"},
        ],
        "availability_mode": "all",
        "qos": 1,
        "components": components,
    }
    return f"{discovery_prefix}/device/amsd_{ident}/config", dumps(payload)
