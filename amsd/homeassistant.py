"""Home Assistant device-based MQTT discovery (`homeassistant/device/<id>/config`, HA 2024.11+)."""

from __future__ import annotations

import re
from typing import Any, Final

from amsd import __version__
from amsd.payloads import COUNTER_KEYS, dumps

EXPIRE_AFTER_S: Final = 30

# key -> (name, device_class, unit, state_class)
_SENSORS: Final[dict[str, tuple[str, str | None, str | None, str]]] = {
    "power_import": ("Active power import", "power", "W", "measurement"),
    "power_export": ("Active power export", "power", "W", "measurement"),
    "reactive_import": ("Reactive power import", "reactive_power", "var", "measurement"),
    "reactive_export": ("Reactive power export", "reactive_power", "var", "measurement"),
    "apparent_import": ("Apparent power import", "apparent_power", "VA", "measurement"),
    "power_factor": ("Power factor", "power_factor", None, "measurement"),
    "frequency": ("Frequency", "frequency", "Hz", "measurement"),
    "gas": ("Gas", "gas", "m³", "total_increasing"),
    "grid_power": ("Grid power", "power", "W", "measurement"),
}


def _describe(key: str) -> tuple[str, str | None, str | None, str]:
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
        reactive = "reactive" in key
        return label, None if reactive else "energy", "kvarh" if reactive else "kWh", "total_increasing"
    return label, None, None, "measurement"


def device_id(meter_id: str | None, meter_name: str) -> str:
    """A stable id for topics and unique ids: the meter's serial, else the configured name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", meter_id or meter_name)


def discovery(
    *,
    meter_name: str,
    meter_id: str | None,
    manufacturer: str | None,
    model: str | None,
    keys: list[str],
    topic_prefix: str,
    discovery_prefix: str,
) -> tuple[str, bytes]:
    """(topic, retained payload) announcing one meter with a sensor per readable key it sends."""
    ident = device_id(meter_id, meter_name)
    components: dict[str, Any] = {}
    for key in keys:
        name, device_class, unit, state_class = _describe(key)
        component: dict[str, Any] = {
            "platform": "sensor",
            "name": name,
            "state_class": state_class,
            "state_topic": f"{topic_prefix}/{meter_name}/{key}",
            "unique_id": f"amsd_{ident}_{key}",
            "default_entity_id": f"sensor.amsd_{ident}_{key}".lower(),
        }
        if device_class:
            component["device_class"] = device_class
        if unit:
            component["unit_of_measurement"] = unit
        if state_class == "measurement":
            component["expire_after"] = EXPIRE_AFTER_S
        components[key] = component
    payload = {
        "device": {
            "identifiers": [f"amsd_{ident}"],
            "name": f"Electricity meter {meter_name}",
            "manufacturer": manufacturer or "unknown",
            "model": model or "unknown",
            "serial_number": meter_id,
            "sw_version": __version__,
        },
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
