"""Per-meter pipeline: bytes from the reader -> decoder -> MQTT messages for the publisher.

Everything here is synchronous and fast: `on_data` runs inside the reader's callback, so it must
never wait. Messages go to `Publisher.submit`, which only queues them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from amsd import homeassistant, payloads
from amsd.accounting import MeterAccounting
from amsd.decoder import Decoder, Event, Reading, UndecodedFrame
from amsd.log import get_logger
from amsd.publish import OutMessage

log = get_logger("amsd.pipeline")

# Undecoded error codes grouped into the diagnostics counters of DESIGN.md section 3.
_CRC_ERRORS = frozenset(("fcs_error", "checksum_error", "crc_mismatch", "cut_short"))
_DECRYPT_ERRORS = frozenset(("no_key", "wrong_key", "tag_mismatch"))
# Readings without a meter id after which Home Assistant discovery uses the configured name.
ANNOUNCE_WITHOUT_ID_AFTER = 10
# Counter plausibility (see `CounterGuard`): the most a counter may rise per hour, in its own unit
# (kWh, kvarh, m3). 1,000 kWh/h is 1 MW, ten times a large 3x125 A house connection, so a real
# reading never trips it while a flipped bit or a garbled high byte does.
MAX_COUNTER_RISE_PER_HOUR = 1000.0
# Always allowed on top (resolution steps, clocks of meter and host disagreeing a little).
COUNTER_RISE_SLACK = 1.0
# Consecutive plausible readings that confirm a new baseline (a meter swap or a reset).
COUNTER_CONFIRMATIONS = 3


class CounterGuard:
    """Decides whether a counter value may go to its Home Assistant topic.

    Home Assistant's total_increasing takes any decrease for a meter reset and any rise for
    consumption, so one glitchy frame (a 0, a flipped high byte) ruins long-term statistics. A value
    is accepted when it is not lower than the last accepted one and rose by at most
    MAX_COUNTER_RISE_PER_HOUR per hour elapsed since it (plus COUNTER_RISE_SLACK). A rejected value
    becomes a candidate baseline: when COUNTER_CONFIRMATIONS consecutive values are plausible from
    it, it is a real reset or meter swap, and it is accepted from then on.
    """

    __slots__ = ("_accepted", "_candidate", "_confirmed")

    def __init__(self) -> None:
        self._accepted: dict[str, tuple[float, datetime]] = {}
        self._candidate: dict[str, tuple[float, datetime]] = {}
        self._confirmed: dict[str, int] = {}

    @staticmethod
    def _plausible(value: float, since: tuple[float, datetime], now: datetime) -> bool:
        last, at = since
        hours = max((now - at).total_seconds(), 0.0) / 3600.0
        return last <= value <= last + MAX_COUNTER_RISE_PER_HOUR * hours + COUNTER_RISE_SLACK

    def check(self, key: str, value: float, now: datetime) -> str | None:
        """None when `value` may be published, else why not (`decrease` or `jump`)."""
        accepted = self._accepted.get(key)
        if accepted is None or self._plausible(value, accepted, now):
            self._accepted[key] = (value, now)
            self._candidate.pop(key, None)
            return None
        candidate = self._candidate.get(key)
        if candidate is not None and self._plausible(value, candidate, now):
            self._confirmed[key] += 1
            if self._confirmed[key] >= COUNTER_CONFIRMATIONS:
                self._accepted[key] = (value, now)
                del self._candidate[key]
                return None
        else:
            self._confirmed[key] = 1
        self._candidate[key] = (value, now)
        return "decrease" if value < accepted[0] else "jump"

    def last(self, key: str) -> float | None:
        accepted = self._accepted.get(key)
        return accepted[0] if accepted is not None else None


@dataclass(slots=True)
class MeterOptions:
    name: str
    topic_prefix: str = "amsd"
    publish_raw: Literal["errors", "all"] = "errors"
    payload_format: Literal["amsd", "amsreader"] = "amsd"
    retain_values: bool = False
    discovery_prefix: str | None = "homeassistant"


class MeterPipeline:
    """Decode one meter's line and turn events into messages."""

    def __init__(
        self,
        options: MeterOptions,
        decoder: Decoder,
        submit: Callable[[OutMessage], None],
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_reading: Callable[[Reading], None] | None = None,
        accounting: MeterAccounting | None = None,
    ) -> None:
        self.options = options
        self.accounting = accounting  # [accounting] on for this meter
        self.decoder = decoder
        self._submit = submit
        self._now = wall_clock
        self._on_reading = on_reading
        base = f"{options.topic_prefix}/{options.name}"
        self.topics = {
            "state": f"{base}/state",
            "obis": f"{base}/obis",
            "raw": f"{base}/raw",
            "availability": f"{base}/availability",
            "diagnostics": f"{base}/diagnostics",
        }
        self._value_topic = f"{base}/"
        self.counters: dict[str, int] = {
            "frames_ok": 0,
            "crc_errors": 0,
            "decrypt_errors": 0,
            "unknown": 0,
            "noise": 0,
            "truncated": 0,
            "counter_glitches": 0,
        }
        self.serial_state = "connecting"
        self.serial_detail: str | None = None
        self.available: bool | None = None
        self._last_frame_monotonic: float | None = None
        self.counter_guard = CounterGuard()
        self._started = time.monotonic()
        self._announced: tuple[str | None, tuple[str, ...]] | None = None
        self._identity: tuple[str | None, str | None, str | None] = (None, None, None)
        self.on_change: Callable[[], None] | None = None  # diagnostics changed state
        self._readings_without_id = 0
        self._errors_seen: set[str] = set()

    # ------------------------------------------------------------------------------- reader side
    def on_data(self, chunk: bytes) -> None:
        for event in self.decoder.feed(chunk):
            self.handle(event)

    def flush(self) -> None:
        """End of the line (stop): report bytes still buffered."""
        for event in self.decoder.flush():
            self.handle(event)

    def on_silent(self, silent: bool) -> None:
        self.set_available(not silent)

    def on_state(self, state: str, detail: str | None) -> None:
        if state != self.serial_state:
            self.serial_state = state
            self.serial_detail = detail
            if state != "open":
                self.set_available(False)
            if self.on_change is not None:
                self.on_change()

    # ------------------------------------------------------------------------------- events
    def handle(self, event: Event) -> None:
        received = self._now()
        if isinstance(event, Reading):
            self._reading(event, received)
        else:
            self._undecoded(event, received)

    def _reading(self, reading: Reading, received: datetime) -> None:
        self.counters["frames_ok"] += 1
        self._last_frame_monotonic = time.monotonic()
        submit = self._submit
        values = payloads.readable_values(reading)
        if self.options.payload_format == "amsreader":
            body = payloads.amsreader_payload(
                reading,
                values,
                name=self.options.name,
                received=received,
                uptime_s=int(time.monotonic() - self._started),
            )
            submit(OutMessage(self.topics["state"], body))
        else:
            submit(OutMessage(self.topics["state"], payloads.state_payload(reading, received, values)))
        submit(OutMessage(self.topics["obis"], payloads.obis_payload(reading, received)))
        retain = self.options.retain_values
        glitches: list[str] = []
        for key, value in values.items():
            if key in payloads.COUNTER_KEYS:
                # Held back from Home Assistant only: state/obis still carry what the meter sent.
                last = self.counter_guard.last(key)
                why = self.counter_guard.check(key, value, received)
                if why is not None:
                    glitches.append(f"{key} {value} after {last} ({why})")
                    continue
                # Retained whatever `retain_values` says: Norwegian meters send counters once an
                # hour, and a restarted Home Assistant would otherwise show them unknown until then.
                submit(OutMessage(self._value_topic + key, payloads.value_payload(value), True, persistent=False))
                continue
            submit(OutMessage(self._value_topic + key, payloads.value_payload(value), retain, persistent=False))
        clock = payloads.meter_time(reading, received)
        if clock is not None:
            submit(OutMessage(self._value_topic + payloads.METER_TIME_KEY, clock.isoformat().encode(), True, False))
        if glitches:
            self.counters["counter_glitches"] += 1
            detail = "; ".join(glitches)
            raw = payloads.raw_payload(reading.raw, received, "frame", "counter_glitch", detail)
            submit(OutMessage(self.topics["raw"], raw))
            log.warning(
                "implausible counter held back",
                meter=self.options.name,
                detail=detail,
                rate_key=f"{self.options.name}/counter_glitch",
            )
        elif self.options.publish_raw == "all":
            submit(OutMessage(self.topics["raw"], payloads.raw_payload(reading.raw, received, "frame", None, None)))
        self.set_available(True)
        if reading.meter_id or reading.model:
            self._identity = (reading.meter_id, reading.manufacturer, reading.model)
        self._announce(values, clock is not None)
        if self.accounting is not None:
            self._account(reading, received, values)
        if self._on_reading is not None:
            self._on_reading(reading)

    def _undecoded(self, frame: UndecodedFrame, received: datetime) -> None:
        error = frame.error
        if error in _CRC_ERRORS:
            self.counters["crc_errors"] += 1
        elif error in _DECRYPT_ERRORS or frame.layer == "cipher":
            self.counters["decrypt_errors"] += 1
        elif error == "noise":
            self.counters["noise"] += 1
        elif error == "truncated":
            self.counters["truncated"] += 1
        else:
            self.counters["unknown"] += 1
        self._submit(OutMessage(self.topics["raw"], payloads.undecoded_payload(frame, received)))
        if error not in self._errors_seen:
            # A new kind of failure (a wrong key, say) shows in diagnostics at once, not up to 60 s later.
            self._errors_seen.add(error)
            if self.on_change is not None:
                self.on_change()
        if error not in ("noise", "truncated"):
            # Rate-limited per meter and error (amsd.log): a wrong key must be visible in the journal
            # without flooding it every two seconds. The detail never contains key material.
            log.warning(
                "frame not decoded",
                meter=self.options.name,
                layer=frame.layer,
                error=error,
                detail=frame.detail,
                rate_key=f"{self.options.name}/{error}",
            )

    def _account(self, reading: Reading, received: datetime, values: dict[str, int | float]) -> None:
        accounting = self.accounting
        assert accounting is not None
        guard = self.counter_guard
        # Counters the guard held back (a glitchy frame) must not become a reset or a jump here either.
        usable = {k: v for k, v in values.items() if k not in payloads.COUNTER_KEYS or guard.last(k) == v}
        try:
            out = accounting.on_reading(received, reading.timestamp, usable)
        except Exception as exc:  # accounting must never stop the readings
            log.error("accounting failed", meter=self.options.name, error=repr(exc), rate_key="accounting/error")
            return
        if out is not None:
            payload, closed_hour = out
            # Retained: Home Assistant reads it after a restart. Stored while the broker is away only
            # when an hour closed (the hourly record); the periodic ones are replaced by the next.
            self._submit(OutMessage(accounting.topic, payload, retain=True, persistent=closed_hour))

    # ------------------------------------------------------------------------------- state
    def set_available(self, available: bool) -> None:
        if available != self.available:
            self.available = available
            self._submit(self.availability_message())
            if self.on_change is not None:
                self.on_change()

    def availability_message(self) -> OutMessage:
        payload = b"online" if self.available else b"offline"
        return OutMessage(self.topics["availability"], payload, retain=True)

    def diagnostics(self, publisher_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        age = None
        if self._last_frame_monotonic is not None:
            age = round(time.monotonic() - self._last_frame_monotonic, 1)
        body: dict[str, Any] = dict(self.counters)
        body["serial_state"] = self.serial_state
        if self.serial_detail:
            body["serial_detail"] = self.serial_detail
        body["last_frame_age_s"] = age
        if publisher_stats is not None:
            body["dropped"] = publisher_stats.get("dropped", 0)
            body["live_values_skipped"] = publisher_stats.get("live_values_skipped", 0)
            body["outbox_depth"] = publisher_stats.get("outbox_depth", 0)
            body["refused_by_broker"] = publisher_stats.get("refused_by_broker", 0)
        return body

    def diagnostics_message(self, publisher_stats: dict[str, Any] | None = None) -> OutMessage:
        return OutMessage(self.topics["diagnostics"], payloads.dumps(self.diagnostics(publisher_stats)), retain=True)

    # ------------------------------------------------------------------------------- discovery
    def _announce(self, values: dict[str, int | float], reading_has_clock: bool) -> None:
        prefix = self.options.discovery_prefix
        if prefix is None:
            return
        # The device is named by the meter's serial: wait for a list that carries it (Aidon and Kaifa
        # list 1 do not), unless the meter never sends one.
        self._readings_without_id = 0 if self._identity[0] else self._readings_without_id + 1
        if self._identity[0] is None and self._readings_without_id < ANNOUNCE_WITHOUT_ID_AFTER:
            return
        seen = set(values)
        if reading_has_clock:
            seen.add(payloads.METER_TIME_KEY)
        keys = tuple(sorted(seen | set(self._announced[1] if self._announced else ())))
        current = (self._identity[0], keys)
        if current == self._announced:
            return
        self._announced = current
        message = self.discovery_message()
        if message is not None:
            self._submit(message)

    def discovery_message(self) -> OutMessage | None:
        prefix = self.options.discovery_prefix
        if prefix is None or self._announced is None:
            return None
        meter_id, manufacturer, model = self._identity
        topic, payload = homeassistant.discovery(
            meter_name=self.options.name,
            meter_id=meter_id,
            manufacturer=manufacturer,
            model=model,
            keys=list(self._announced[1]),
            topic_prefix=self.options.topic_prefix,
            discovery_prefix=prefix,
            accounting=self.accounting is not None,
        )
        return OutMessage(topic, payload, retain=True)
