"""MQTT payloads for readings and undecoded frames (DESIGN.md section 3). Pure functions, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from amsd.decoder import Reading, UndecodedFrame

# (C, D, E) of electricity OBIS codes (A = 1) -> readable key. Keys are stable forever: Home Assistant
# entity ids are derived from them, so a renamed key would orphan users' history.
READABLE_KEYS: Final[dict[tuple[int, int, int], str]] = {
    (1, 7, 0): "power_import",
    (2, 7, 0): "power_export",
    (3, 7, 0): "reactive_import",
    (4, 7, 0): "reactive_export",
    (9, 7, 0): "apparent_import",
    (10, 7, 0): "apparent_export",
    (21, 7, 0): "power_import_l1",
    (41, 7, 0): "power_import_l2",
    (61, 7, 0): "power_import_l3",
    (22, 7, 0): "power_export_l1",
    (42, 7, 0): "power_export_l2",
    (62, 7, 0): "power_export_l3",
    (31, 7, 0): "current_l1",
    (51, 7, 0): "current_l2",
    (71, 7, 0): "current_l3",
    (91, 7, 0): "current_neutral",
    (32, 7, 0): "voltage_l1",
    (52, 7, 0): "voltage_l2",
    (72, 7, 0): "voltage_l3",
    (13, 7, 0): "power_factor",
    (33, 7, 0): "power_factor_l1",
    (53, 7, 0): "power_factor_l2",
    (73, 7, 0): "power_factor_l3",
    (14, 7, 0): "frequency",
    (1, 4, 0): "power_import_quarter_hour_average",
    (1, 8, 0): "energy_import",
    (1, 8, 1): "energy_import_t1",
    (1, 8, 2): "energy_import_t2",
    (1, 8, 3): "energy_import_t3",
    (1, 8, 4): "energy_import_t4",
    (2, 8, 0): "energy_export",
    (2, 8, 1): "energy_export_t1",
    (2, 8, 2): "energy_export_t2",
    (2, 8, 3): "energy_export_t3",
    (2, 8, 4): "energy_export_t4",
    (3, 8, 0): "energy_reactive_import",
    (4, 8, 0): "energy_reactive_export",
}
# Counters that only ever rise (Home Assistant total_increasing).
COUNTER_KEYS: Final = frozenset([*(key for key in READABLE_KEYS.values() if key.startswith("energy_")), "gas"])
# Signed power at the grid connection: import minus export (W), for Home Assistant's Energy dashboard.
GRID_POWER_KEY: Final = "grid_power"
# The meter's clock, published as an ISO 8601 string with offset (the only non-numeric value topic).
METER_TIME_KEY: Final = "meter_time"
# Every per-value topic key amsd may publish: readable keys, gas and the derived ones.
VALUE_KEYS: Final = frozenset([*READABLE_KEYS.values(), "gas", GRID_POWER_KEY, METER_TIME_KEY])
# DSMR gas (0-n:24.2.1 / 24.2.3): [timestamp, volume]; the volume becomes `gas`.
_GAS: Final = frozenset(((24, 2, 1), (24, 2, 3)))

# amsreader-firmware JSON keys, for users migrating from that firmware.
AMSREADER_KEYS: Final[dict[str, str]] = {
    "power_import": "P",
    "power_export": "PO",
    "reactive_import": "Q",
    "reactive_export": "QO",
    "current_l1": "I1",
    "current_l2": "I2",
    "current_l3": "I3",
    "voltage_l1": "U1",
    "voltage_l2": "U2",
    "voltage_l3": "U3",
    "energy_import": "tPI",
    "energy_export": "tPO",
    "energy_reactive_import": "tQI",
    "energy_reactive_export": "tQO",
}


def _split_obis(code: str) -> tuple[int, int, int, int, int] | None:
    try:
        ab, rest = code.split(":", 1)
        a, _b = ab.split("-", 1)
        c, d, e, _f = rest.split(".", 3)
        return int(a), int(_b), int(c), int(d), int(e)
    except ValueError:
        return None


_KEY_CACHE: dict[str, str | None] = {}


def readable_key(obis: str) -> str | None:
    """The state-topic key for an OBIS code, if it has one (A and B may be anything: Kamstrup 1-1:)."""
    cached = _KEY_CACHE.get(obis, "")
    if cached != "":
        return cached
    parts = _split_obis(obis)
    key: str | None = None
    if parts is not None:
        a, _b, c, d, e = parts
        if a == 1:
            key = READABLE_KEYS.get((c, d, e))
        elif a == 0 and (c, d, e) in _GAS:
            key = "gas"
    if len(_KEY_CACHE) < 4096:
        _KEY_CACHE[obis] = key
    return key


def readable_values(reading: Reading) -> dict[str, int | float]:
    """Readable key -> number. Where two channels map to one key (1-0: and 1-1:), the first wins."""
    out: dict[str, int | float] = {}
    for obis, value in reading.values.items():
        key = readable_key(obis)
        if key is None or key in out:
            continue
        data = value.value
        if key == "gas" and isinstance(data, list):
            data = next((v for v in reversed(data) if isinstance(v, int | float)), None)
        if isinstance(data, int | float) and not isinstance(data, bool):
            out[key] = data
    imported, exported = out.get("power_import"), out.get("power_export")
    if imported is not None and exported is not None:
        # Only when the message has both: list 1 (import only) must not make export look like 0.
        out[GRID_POWER_KEY] = imported - exported
    return out


def meter_time(reading: Reading, received: datetime) -> datetime | None:
    """The meter's clock as an aware datetime.

    Meters that send local wall time without an offset (Norwegian Aidon and Kaifa) get the offset
    that brings their clock nearest to `received` (aware, UTC), rounded to a quarter hour: meter
    clocks are kept within seconds by the grid operator, so this is their zone's offset, daylight
    saving included, without a time zone setting and whatever zone the host runs in. A clock more
    than 14 hours off (no zone is) is taken to be in the host's zone.
    """
    moment = reading.timestamp
    if moment is None or moment.tzinfo is not None:
        return moment
    quarters = round((moment - received.astimezone(UTC).replace(tzinfo=None)).total_seconds() / 900)
    if abs(quarters) > 14 * 4:
        return moment.astimezone()
    return moment.replace(tzinfo=timezone(timedelta(minutes=15 * quarters)))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def state_payload(reading: Reading, received: datetime, values: dict[str, int | float]) -> bytes:
    """Flat JSON for `<prefix>/<meter>/state`."""
    body: dict[str, Any] = {
        "ts": _iso(reading.timestamp),
        "received": received.isoformat(),
        "meter_id": reading.meter_id,
        "model": reading.model,
    }
    body.update(values)
    return dumps(body)


def obis_payload(reading: Reading, received: datetime) -> bytes:
    """All values with units for `<prefix>/<meter>/obis`."""
    return dumps(
        {
            "ts": _iso(reading.timestamp),
            "received": received.isoformat(),
            "meter_id": reading.meter_id,
            "values": {k: {"value": v.value, "unit": v.unit} for k, v in reading.values.items()},
        }
    )


def amsreader_payload(
    reading: Reading, values: dict[str, int | float], *, name: str, received: datetime, uptime_s: int
) -> bytes:
    """amsreader-firmware's "JSON (classic)" message: device fields at the top, meter data in `data`.

    Units as the firmware's: P/PO W, Q/QO var, I A, U V, tPI/tPO kWh, tQI/tQO kvarh, rtc and t epoch
    seconds. `lv` is the meter's list version id (e.g. `AIDON_V0001`), `id` its serial, `type` its
    model. Keys the message does not carry are left out, as the firmware leaves them out of list 1.
    The ESP's own fields (`vcc`, `rssi`, `temp`) have no meaning here and are not sent.
    """
    data: dict[str, Any] = {}
    for field_name, text in (("lv", reading.list), ("id", reading.meter_id), ("type", reading.model)):
        if text is not None:
            data[field_name] = text
    data.update((AMSREADER_KEYS[k], v) for k, v in values.items() if k in AMSREADER_KEYS)
    clock = meter_time(reading, received)
    if clock is not None:
        data["rtc"] = int(clock.timestamp())
    body: dict[str, Any] = {
        "id": name,
        "name": name,
        "up": uptime_s,
        "t": int((clock or received).timestamp()),
        "data": data,
    }
    return dumps(body)


def raw_payload(
    raw: bytes, received: datetime, layer: str, error: str | None, detail: str | None, **extra: Any
) -> bytes:
    """`<prefix>/<meter>/raw`: the frame as hex with why it was not (or was) decoded."""
    body: dict[str, Any] = {
        "ts": received.isoformat(),
        "hex": raw.hex().upper(),
        "layer": layer,
        "error": error,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return dumps(body)


def undecoded_payload(frame: UndecodedFrame, received: datetime) -> bytes:
    return raw_payload(
        frame.raw,
        received,
        frame.layer,
        frame.error,
        frame.detail,
        system_title=frame.system_title,
        invocation_counter=frame.invocation_counter,
    )


def value_payload(value: int | float) -> bytes:
    """A bare number for `<prefix>/<meter>/<key>`."""
    return repr(value).encode() if isinstance(value, float) else str(value).encode()
