"""A validator for Home Assistant MQTT device-based discovery payloads, written from HA's documentation
(MQTT integration: device discovery, MQTT sensor; sensor device classes and state classes).

Home Assistant's own voluptuous schemas are not importable here, so this module restates the rules
amsd relies on. It is strict on purpose: unknown keys are errors, so a typo cannot pass silently.
`validate_device_discovery(payload)` returns a list of readable errors (empty: valid).
"""

from __future__ import annotations

import re
from typing import Any, Final

# Sensor device classes amsd may use -> allowed units (None: no unit) and allowed state classes
# (None: no state class). From HA's sensor documentation (units are HA's unit constants).
DEVICE_CLASSES: Final[dict[str | None, tuple[frozenset[str | None], frozenset[str | None]]]] = {
    "power": (frozenset({"W", "kW", "MW"}), frozenset({"measurement", None})),
    "apparent_power": (frozenset({"VA", "kVA"}), frozenset({"measurement", None})),
    "reactive_power": (frozenset({"var", "kvar"}), frozenset({"measurement", None})),
    "energy": (frozenset({"Wh", "kWh", "MWh"}), frozenset({"total", "total_increasing", None})),
    "reactive_energy": (frozenset({"varh", "kvarh"}), frozenset({"total", "total_increasing", None})),
    "voltage": (frozenset({"V", "mV", "kV"}), frozenset({"measurement", None})),
    "current": (frozenset({"A", "mA"}), frozenset({"measurement", None})),
    "frequency": (frozenset({"Hz", "kHz"}), frozenset({"measurement", None})),
    "power_factor": (frozenset({None, "%"}), frozenset({"measurement", None})),
    "gas": (frozenset({"m³", "ft³", "CCF"}), frozenset({"total", "total_increasing", None})),
    "duration": (
        frozenset({"s", "min", "h", "d", "ms"}),
        frozenset({"measurement", "total", "total_increasing", None}),
    ),
    # A timestamp sensor's state is an ISO 8601 datetime with offset: no unit, no state class.
    "timestamp": (frozenset({None}), frozenset({None})),
}
STATE_CLASSES: Final = frozenset({"measurement", "total", "total_increasing"})
ENTITY_CATEGORIES: Final = frozenset({"diagnostic", "config"})

# Keys of the device-level payload: `device`, `origin`, `components` plus options shared by all
# components (HA copies them into each component that does not set them).
_ROOT_REQUIRED: Final = frozenset({"device", "origin", "components"})
_ROOT_SHARED: Final = frozenset(
    {"availability", "availability_mode", "availability_topic", "qos", "state_topic", "encoding"}
)
_DEVICE_KEYS: Final = frozenset(
    {"identifiers", "connections", "name", "manufacturer", "model", "model_id", "serial_number",
     "sw_version", "hw_version", "suggested_area", "via_device", "configuration_url"}
)  # fmt: skip
_ORIGIN_KEYS: Final = frozenset({"name", "sw_version", "support_url"})
_SENSOR_REQUIRED: Final = frozenset({"platform", "state_topic", "unique_id"})
_SENSOR_KEYS: Final = _SENSOR_REQUIRED | frozenset(
    {"name", "device_class", "state_class", "unit_of_measurement", "value_template", "expire_after",
     "entity_category", "default_entity_id", "availability", "availability_mode", "icon",
     "suggested_display_precision", "force_update", "enabled_by_default", "qos", "options",
     "last_reset_value_template", "json_attributes_topic"}
)  # fmt: skip
_TOPIC: Final = re.compile(r"^[^#+\x00]+$")
_ENTITY_ID: Final = re.compile(r"^sensor\.[a-z0-9_]+$")


def _check_availability(where: str, availability: Any, errors: list[str]) -> None:
    if not isinstance(availability, list) or not availability:
        errors.append(f"{where}: availability must be a non-empty list")
        return
    for entry in availability:
        if not isinstance(entry, dict) or not isinstance(entry.get("topic"), str) or not _TOPIC.match(entry["topic"]):
            errors.append(f"{where}: availability entry {entry!r} needs a plain topic")
        elif set(entry) - {"topic", "payload_available", "payload_not_available", "value_template"}:
            errors.append(f"{where}: unknown keys in availability entry {entry!r}")


def _check_sensor(key: str, component: dict[str, Any], errors: list[str]) -> None:
    where = f"components.{key}"
    missing = _SENSOR_REQUIRED - set(component)
    if missing:
        errors.append(f"{where}: missing {sorted(missing)}")
    unknown = set(component) - _SENSOR_KEYS
    if unknown:
        # `object_id` lands here: removed in HA 2026.4, `default_entity_id` replaces it.
        errors.append(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(component.get("state_topic"), str) or not _TOPIC.match(component["state_topic"]):
        errors.append(f"{where}: state_topic must be a topic without wildcards")
    entity_id = component.get("default_entity_id")
    if entity_id is None:
        errors.append(f"{where}: default_entity_id missing")
    elif not isinstance(entity_id, str) or not _ENTITY_ID.match(entity_id):
        errors.append(f"{where}: default_entity_id {entity_id!r} is not sensor.<lowercase id>")
    device_class = component.get("device_class")
    state_class = component.get("state_class")
    unit = component.get("unit_of_measurement")
    if state_class is not None and state_class not in STATE_CLASSES:
        errors.append(f"{where}: unknown state_class {state_class!r}")
    if device_class is not None:
        if device_class not in DEVICE_CLASSES:
            errors.append(f"{where}: device_class {device_class!r} not allowed")
        else:
            units, state_classes = DEVICE_CLASSES[device_class]
            if unit not in units:
                errors.append(f"{where}: unit {unit!r} not allowed for {device_class}")
            if state_class not in state_classes:
                errors.append(f"{where}: state_class {state_class!r} not allowed for {device_class}")
    if "expire_after" in component:
        expire = component["expire_after"]
        if not isinstance(expire, int) or isinstance(expire, bool) or expire <= 0:
            errors.append(f"{where}: expire_after must be a positive integer")
        if state_class in ("total", "total_increasing") or device_class == "timestamp":
            errors.append(f"{where}: a counter or clock must not expire between hourly lists")
    category = component.get("entity_category")
    if category is not None and category not in ENTITY_CATEGORIES:
        errors.append(f"{where}: entity_category {category!r} not allowed")
    if "availability" in component:
        _check_availability(where, component["availability"], errors)
    if "value_template" in component and not isinstance(component["value_template"], str):
        errors.append(f"{where}: value_template must be a string")


def validate_device_discovery(payload: Any) -> list[str]:
    """Every way `payload` breaks the device discovery rules (empty: valid)."""
    errors: list[str] = []
    if not isinstance(payload, dict):
        return ["payload must be a JSON object"]
    missing = _ROOT_REQUIRED - set(payload)
    if missing:
        errors.append(f"missing {sorted(missing)}")
    unknown = set(payload) - _ROOT_REQUIRED - _ROOT_SHARED
    if unknown:
        errors.append(f"unknown root keys {sorted(unknown)}")
    device = payload.get("device")
    if not isinstance(device, dict):
        errors.append("device must be an object")
    else:
        if not device.get("identifiers") and not device.get("connections"):
            errors.append("device needs identifiers or connections")
        if set(device) - _DEVICE_KEYS:
            errors.append(f"unknown device keys {sorted(set(device) - _DEVICE_KEYS)}")
        for name in _DEVICE_KEYS - {"identifiers", "connections", "via_device"}:
            if name in device and (not isinstance(device[name], str) or not device[name]):
                errors.append(f"device.{name} must be a non-empty string when present")
        if not device.get("name"):
            errors.append("device.name is required")
    origin = payload.get("origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("name"), str):
        errors.append("origin needs a name")
    elif set(origin) - _ORIGIN_KEYS:
        errors.append(f"unknown origin keys {sorted(set(origin) - _ORIGIN_KEYS)}")
    if "availability" in payload:
        _check_availability("root", payload["availability"], errors)
    if payload.get("availability_mode", "latest") not in ("all", "any", "latest"):
        errors.append("availability_mode must be all, any or latest")
    if payload.get("qos", 0) not in (0, 1, 2):
        errors.append("qos must be 0, 1 or 2")
    components = payload.get("components")
    if not isinstance(components, dict) or not components:
        errors.append("components must be a non-empty object")
        return errors
    unique_ids: set[str] = set()
    for key, component in components.items():
        if not isinstance(component, dict):
            errors.append(f"components.{key} must be an object")
            continue
        if component.get("platform") != "sensor":
            errors.append(f"components.{key}: amsd announces sensors only, got {component.get('platform')!r}")
            continue
        _check_sensor(key, component, errors)
        unique_id = component.get("unique_id")
        if unique_id in unique_ids:
            errors.append(f"components.{key}: duplicate unique_id {unique_id!r}")
        unique_ids.add(str(unique_id))
    return errors
