"""Energy accounting: hourly, daily and monthly import/export, and the Norwegian capacity tariff.

The tracker is pure: readings come in with their times, snapshots and a JSON-able state come out; no
clock reads, no asyncio. `AccountingStore` (file I/O) and `MeterAccounting` (tracker + store for one
meter, used by the pipeline) sit at the end of the module.

How energy is assigned to hours (docs/accounting.md has the long version):

- Counters are the truth. Every counter reading closes a *span* that started at the previous counter
  reading; the span's counter delta is spread over the hours it touches, weighted by the energy the
  power readings integrated in each hour. Time inside the span without power readings (a gap) is
  weighted by the span's mean power, or by time alone when there was no power at all.
- Meters that send counters every frame (DSMR, most continental meters) close a span every frame, so
  every hour is exact. Norwegian list 3 sends counters once an hour at hh:00:0x: the current hour is
  the integrated power (`estimated`) until the counter arrives and replaces it.
- An hour is `estimated` when its total did not come from counters within SNAP_S of both its
  boundaries, `gap` when amsd saw no reading for more than MAX_READING_GAP_S of it.
- A counter that goes backwards (reset, meter swap) or jumps implausibly starts a new baseline: the
  open span keeps its integrated estimate, nothing negative is ever booked. A counter repeated while
  power says energy flowed (Aidon repeats last hour's counters in some list 3 frames) is ignored.
- Hours are real elapsed hours keyed by their local start, so a DST day has 23 or 25 of them; a day is
  a local calendar day, a month a local calendar month.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time
from itertools import pairwise
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE: Final = "Europe/Oslo"
# The usual Norwegian capacity steps (kWh/h); grid operators differ, so they are configurable.
DEFAULT_THRESHOLDS_KWH: Final = (2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 50.0, 75.0, 100.0)
DEFAULT_PEAK_HOURS: Final = 3

# A counter read within this of an hour boundary counts as that boundary's value: list 3 arrives at
# hh:00:00-hh:00:10, and less than a minute at 100 kW is under 2 kWh... in practice a few Wh.
SNAP_S: Final = 60.0
# Power readings further apart than this are not integrated, and readings further apart mark the
# hours in between as `gap` (meters push every 1-10 s; five minutes is a line or daemon outage).
MAX_READING_GAP_S: Final = 300.0
# Counter plausibility, as in the pipeline's CounterGuard: 1,000 kWh/h is ten large houses.
MAX_RISE_KWH_PER_HOUR: Final = 1000.0
RISE_SLACK_KWH: Final = 1.0
# A counter equal to the previous one while power integrated at least this much is a repeat.
STALE_MIN_KWH: Final = 0.05
# Spans longer than this are not spread (a month-long outage): new baseline, hours left as they are.
MAX_SPREAD_S: Final = 31 * 86_400.0
# How far the meter clock may be from the host clock and still be used.
MAX_CLOCK_SKEW_S: Final = 2 * 86_400.0
# Fold candidates for ambiguous local times (DST fall-back): the earliest not before the last moment
# minus this is taken.
_AMBIGUITY_SLACK_S: Final = 600.0
SAVE_INTERVAL_S: Final = 600.0
STATE_VERSION: Final = 1

IMPORT, EXPORT = 0, 1
_CHANNELS: Final = (("import", "power_import", "energy_import"), ("export", "power_export", "energy_export"))
_KWH_PER_WS: Final = 1.0 / 3_600_000.0
_EPSILON_KWH: Final = 1e-9


@dataclass(frozen=True, slots=True)
class AccountingSettings:
    timezone: str = DEFAULT_TIMEZONE
    peak_hours: int = DEFAULT_PEAK_HOURS
    thresholds_kwh: tuple[float, ...] = DEFAULT_THRESHOLDS_KWH
    # Snapshots between these are skipped (hour ends and counter corrections are always published).
    publish_interval_s: float = 10.0
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises for an unknown zone
        if self.peak_hours < 1:
            raise ValueError("peak_hours must be at least 1")
        if any(b <= a for a, b in pairwise(self.thresholds_kwh)):
            raise ValueError("thresholds_kwh must be strictly increasing")


# ------------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """Energy of one hour, day or month."""

    start: datetime  # local, aware
    import_kwh: float
    export_kwh: float
    estimated: bool
    gap: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "import_kwh": _round(self.import_kwh),
            "export_kwh": _round(self.export_kwh),
            "estimated": self.estimated,
            "gap": self.gap,
        }


@dataclass(frozen=True, slots=True)
class PeakHour:
    start: datetime
    import_kwh: float
    estimated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "day": self.start.date().isoformat(),
            "import_kwh": _round(self.import_kwh),
            "estimated": self.estimated,
        }


@dataclass(frozen=True, slots=True)
class Capacity:
    """The month's capacity tariff position."""

    peaks: tuple[PeakHour, ...]  # each day's highest hour, the top N days, highest first
    average_kwh: float  # of `peaks` (over the days there are when fewer than N)
    step: int  # 1-based: 1 = below the first threshold
    step_min_kwh: float
    step_max_kwh: float | None  # None for the top step
    # The current hour raises the month's average once its import exceeds this.
    threshold_kwh: float
    projected_hour_kwh: float  # current hour so far + current power until the hour ends
    projected_average_kwh: float
    projected_step: int
    raises_average: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "peaks": [peak.to_json() for peak in self.peaks],
            "average_kwh": _round(self.average_kwh),
            "step": self.step,
            "step_min_kwh": self.step_min_kwh,
            "step_max_kwh": self.step_max_kwh,
            "threshold_kwh": _round(self.threshold_kwh),
            "projected_hour_kwh": _round(self.projected_hour_kwh),
            "projected_average_kwh": _round(self.projected_average_kwh),
            "projected_step": self.projected_step,
            "raises_average": self.raises_average,
        }


@dataclass(frozen=True, slots=True)
class AccountingSnapshot:
    time: datetime  # the reading's moment, local
    clock: str  # "meter" or "host": which clock placed the reading
    hour: PeriodTotals
    previous_hour: PeriodTotals | None
    day: PeriodTotals
    month: PeriodTotals
    capacity: Capacity
    previous_month: PeriodTotals | None
    previous_month_capacity: Capacity | None
    counters: dict[str, int]
    # A closed hour got its value or a correction: publish persistently, save the state.
    hour_closed: bool = False
    save_due: bool = False

    def to_json(self) -> dict[str, Any]:
        previous_month: dict[str, Any] | None = None
        if self.previous_month is not None and self.previous_month_capacity is not None:
            previous_month = self.previous_month.to_json()
            cap = self.previous_month_capacity
            previous_month["peaks"] = [peak.to_json() for peak in cap.peaks]
            previous_month["peak_average_kwh"] = _round(cap.average_kwh)
            previous_month["step"] = cap.step
        return {
            "ts": self.time.isoformat(),
            "clock": self.clock,
            "hour": self.hour.to_json(),
            "previous_hour": self.previous_hour.to_json() if self.previous_hour else None,
            "day": self.day.to_json(),
            "month": self.month.to_json(),
            "capacity": self.capacity.to_json(),
            "previous_month": previous_month,
            "counters": dict(self.counters),
        }


def _round(value: float) -> float:
    return round(value, 3) + 0.0  # Wh resolution; + 0.0 turns -0.0 into 0.0


# ------------------------------------------------------------------------------------ tracker


@dataclass(slots=True)
class _Hour:
    kwh: list[float] = field(default_factory=lambda: [0.0, 0.0])  # booked from closed spans
    estimated: bool = False
    gap: bool = False


@dataclass(frozen=True, slots=True)
class _Row:
    """One hour as a snapshot shows it."""

    start: int
    import_kwh: float
    export_kwh: float
    estimated: bool
    gap: bool


@dataclass(slots=True)
class _Channel:
    """One direction: the last counter (span anchor), power integrated since, the last power sample."""

    anchor_t: float | None = None
    anchor_kwh: float | None = None
    pieces: dict[int, list[float]] = field(default_factory=dict)  # hour start -> [kWh, seconds]
    power_t: float | None = None
    power_w: float | None = None


class AccountingTracker:
    """Per-meter accounting. Feed every reading to `on_reading`; persist `state()`."""

    def __init__(self, settings: AccountingSettings, state: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.tz = ZoneInfo(settings.timezone)
        self._thresholds = tuple(float(x) for x in settings.thresholds_kwh)
        self._hours: dict[int, _Hour] = {}
        self._channels = (_Channel(), _Channel())
        self._last_t: float | None = None
        self._last_reading_t: float | None = None
        self._clock_offset: float | None = None
        self._last_publish_t: float | None = None
        self._last_save_t: float | None = None
        self.counters: dict[str, int] = {"resets": 0, "jumps": 0, "stale": 0, "clock_backwards": 0}
        self._bounds_cache: tuple[int, int] = (0, 0)
        self._month_start_cache: dict[int, int] = {}
        self._day_cache: dict[int, date] = {}
        # Rows of settled hours (no open estimate): a snapshot recomputes only the open ones.
        self._row_cache: dict[int, _Row] = {}
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------------------- time
    def _hour_start(self, t: float) -> int:
        local = datetime.fromtimestamp(t, self.tz)
        return int(local.replace(minute=0, second=0, microsecond=0).timestamp())

    def _bounds(self, t: float) -> tuple[int, int]:
        """[start, end) of the local hour containing `t`, as epoch seconds."""
        start, end = self._bounds_cache
        if start <= t < end:
            return start, end
        start = self._hour_start(t)
        end = self._hour_start(start + 3600)
        if end <= start:  # zones with half-hour DST shifts: never a zero-length hour
            end = start + 3600
        self._bounds_cache = (start, end)
        return start, end

    def _local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def _localize(self, naive: datetime, received: float) -> float:
        """A naive local meter time in epoch seconds; the DST fall-back hour resolved by continuity."""
        candidates = sorted({naive.replace(tzinfo=self.tz, fold=fold).timestamp() for fold in (0, 1)})
        if len(candidates) == 1:
            return candidates[0]
        if self._last_t is not None:
            for candidate in candidates:
                if candidate >= self._last_t - _AMBIGUITY_SLACK_S:
                    return candidate
            return candidates[-1]
        return min(candidates, key=lambda c: abs(c - received))

    def _moment(self, received: datetime, meter_time: datetime | None) -> tuple[float, str]:
        """When the reading happened: the meter's clock when it is sane, else the host's (shifted by
        the meter clock's last known offset, for lists without a clock between lists with one)."""
        host = received.timestamp()
        skew = self.settings.max_clock_skew_s
        if meter_time is not None and meter_time.year >= 2000:
            meter = self._localize(meter_time, host) if meter_time.tzinfo is None else meter_time.timestamp()
            if abs(meter - host) <= skew:
                self._clock_offset = meter - host
                return meter, "meter"
        if self._clock_offset is not None and abs(self._clock_offset) <= skew:
            return host + self._clock_offset, "meter"
        return host, "host"

    # ------------------------------------------------------------------------------- readings
    def on_reading(
        self, received: datetime, meter_time: datetime | None, values: dict[str, int | float]
    ) -> AccountingSnapshot | None:
        """Account one reading. `values` are readable keys (`power_import` W, `energy_import` kWh...).

        Returns a snapshot when one is due: at hour ends, counter corrections, new baselines, and
        otherwise every `publish_interval_s`."""
        t, clock = self._moment(received, meter_time)
        if self._last_t is not None and t < self._last_t:
            # A meter clock set back, or a late frame: account it at the last moment, never backwards.
            if self._last_t - t > 1.0:
                self.counters["clock_backwards"] += 1
            t = self._last_t
        previous_hour_start = self._bounds(self._last_t)[0] if self._last_t is not None else None
        hour_start, _end = self._bounds(t)
        hour_closed = previous_hour_start is not None and hour_start != previous_hour_start
        self._mark_gaps(t)
        changed = False
        events: set[str] = set()
        for index, (_name, power_key, energy_key) in enumerate(_CHANNELS):
            channel = self._channels[index]
            power = values.get(power_key)
            if power is not None and power >= 0:
                self._integrate(channel, t, float(power))
            counter = values.get(energy_key)
            if counter is not None:
                event, closed_past = self._counter(index, channel, t, float(counter))
                changed = changed or closed_past
                if event is not None:
                    events.add(event)
        for event in events:  # one meter swap resets both counters: counted once
            self.counters[event] += 1
        self._last_t = t
        self._last_reading_t = t
        if hour_closed:
            self._prune(t)
        publish = (
            hour_closed
            or changed
            or self._last_publish_t is None
            or t - self._last_publish_t >= self.settings.publish_interval_s
        )
        if not publish:
            return None
        self._last_publish_t = t
        save_due = hour_closed or changed or self._last_save_t is None or t - self._last_save_t >= SAVE_INTERVAL_S
        if save_due:
            self._last_save_t = t
        return self.snapshot(t, clock, hour_closed=hour_closed or changed, save_due=save_due)

    def _mark_gaps(self, t: float) -> None:
        last = self._last_reading_t
        if last is None:
            start, _end = self._bounds(t)
            if t - start > MAX_READING_GAP_S:
                self._hour(start).gap = True
            return
        if t - last <= MAX_READING_GAP_S:
            return
        # Every hour the silence touched; a month-long one only marks its last month.
        for start, _end in self._hours_between(max(last, t - MAX_SPREAD_S), t):
            self._hour(start).gap = True

    def _hours_between(self, a: float, b: float) -> list[tuple[int, int]]:
        """The local hours overlapping [a, b): the one containing `a`, then each up to `b`."""
        hours = []
        start, end = self._bounds(a)
        while True:
            hours.append((start, end))
            if end >= b:
                return hours
            start, end = self._bounds(end)

    def _hour(self, start: int) -> _Hour:
        """The record of an hour, for changing it."""
        self._row_cache.pop(start, None)
        hour = self._hours.get(start)
        if hour is None:
            hour = self._hours[start] = _Hour()
        return hour

    def _integrate(self, channel: _Channel, t: float, power_w: float) -> None:
        last_t, last_w = channel.power_t, channel.power_w
        channel.power_t, channel.power_w = t, power_w
        if last_t is None or last_w is None:
            return
        span = t - last_t
        if span <= 0 or span > MAX_READING_GAP_S:
            return
        average_w = (last_w + power_w) / 2.0
        a = last_t
        while a < t:
            start, end = self._bounds(a)
            b = min(t, float(end))
            piece = channel.pieces.get(start)
            if piece is None:
                piece = channel.pieces[start] = [0.0, 0.0]
            piece[0] += average_w * (b - a) * _KWH_PER_WS
            piece[1] += b - a
            a = b

    def _counter(self, index: int, channel: _Channel, t: float, value: float) -> tuple[str | None, bool]:
        """Close the open span with a counter value. Returns the anomaly seen (a `counters` key) and
        whether a closed hour changed or a new baseline began (worth publishing and saving at once)."""
        anchor = channel.anchor_kwh
        if anchor is None or channel.anchor_t is None:
            self._rebase(index, channel, t, value)
            return None, True
        elapsed = t - channel.anchor_t
        delta = value - anchor
        if delta < -_EPSILON_KWH:
            self._rebase(index, channel, t, value)  # reset or meter swap: never a negative hour
            return "resets", True
        if delta > MAX_RISE_KWH_PER_HOUR * elapsed / 3600.0 + RISE_SLACK_KWH or elapsed > MAX_SPREAD_S:
            self._rebase(index, channel, t, value)
            return "jumps", True
        if abs(delta) <= _EPSILON_KWH and sum(p[0] for p in channel.pieces.values()) >= STALE_MIN_KWH:
            return "stale", False
        reached_past = self._spread(index, channel, t, max(delta, 0.0))
        channel.anchor_t, channel.anchor_kwh = t, value
        return None, reached_past

    def _rebase(self, index: int, channel: _Channel, t: float, value: float) -> None:
        self._book_estimates(index, channel)
        channel.anchor_t, channel.anchor_kwh = t, value

    def _book_estimates(self, index: int, channel: _Channel) -> None:
        """Close the open span without a counter: each hour keeps what power integrated, estimated."""
        for start, (kwh, _seconds) in channel.pieces.items():
            hour = self._hour(start)
            hour.kwh[index] += kwh
            hour.estimated = True
        channel.pieces = {}

    def _spread(self, index: int, channel: _Channel, t: float, delta: float) -> bool:
        """Book `delta` over the hours of the span [anchor, t]; True when it reached a past hour."""
        a = channel.anchor_t
        assert a is not None
        pieces = channel.pieces
        hours = self._hours_between(a, t) if t > a else [self._bounds(t)]
        overlaps = [max(0.0, min(float(end), t) - max(float(start), a)) for start, end in hours]
        integrated = [pieces.get(start, (0.0, 0.0))[0] for start, _end in hours]
        covered = [pieces.get(start, (0.0, 0.0))[1] for start, _end in hours]
        total_covered = sum(covered)
        weights: list[float]
        if total_covered > 0:
            mean_kwh_per_s = sum(integrated) / total_covered
            weights = [
                kwh + max(0.0, span - seconds) * mean_kwh_per_s
                for kwh, span, seconds in zip(integrated, overlaps, covered, strict=True)
            ]
        else:
            weights = overlaps
        total = sum(weights)
        if total <= 0:
            weights, total = overlaps, sum(overlaps)
        if total <= 0:
            weights, total = [0.0] * (len(hours) - 1) + [1.0], 1.0
        current_start = self._bounds(t)[0]
        reached_past = False
        for (start, end), weight, overlap in zip(hours, weights, overlaps, strict=True):
            hour = self._hour(start)
            hour.kwh[index] += delta * weight / total
            # Counters within SNAP_S of both ends make the hour exact; a few seconds of the next
            # hour's energy in a span (list 3 at hh:00:05) do not make that hour an estimate.
            tight = a >= start - SNAP_S and t <= end + SNAP_S
            if not tight and overlap > SNAP_S:
                hour.estimated = True
            reached_past = reached_past or start != current_start
        channel.pieces = {}
        return reached_past

    def _prune(self, t: float) -> None:
        """Keep the hours of this month and the previous one."""
        keep_from = self._previous_month_start(t)
        for start in [s for s in self._hours if s < keep_from]:
            del self._hours[start]
            self._row_cache.pop(start, None)
        for channel in self._channels:
            for start in [s for s in channel.pieces if s < keep_from]:
                del channel.pieces[start]
        if len(self._month_start_cache) > 64:
            self._month_start_cache.clear()

    # ------------------------------------------------------------------------------- periods
    def _month_start(self, t: float) -> int:
        local = self._local(t)
        key = local.year * 12 + local.month - 1
        cached = self._month_start_cache.get(key)
        if cached is None:
            first = datetime(local.year, local.month, 1, tzinfo=self.tz)
            cached = self._month_start_cache[key] = int(first.timestamp())
        return cached

    def _previous_month_start(self, t: float) -> int:
        return self._month_start(self._month_start(t) - 1)

    def _day_start(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self.tz)

    def _day(self, start: int) -> date:
        day = self._day_cache.get(start)
        if day is None:
            if len(self._day_cache) > 4096:
                self._day_cache.clear()
            day = self._day_cache[start] = self._local(start).date()
        return day

    def _row(self, start: int, t: float, current_start: int) -> _Row:
        """One hour as shown: booked energy plus the open span's power estimate."""
        cached = self._row_cache.get(start)
        if cached is not None:
            return cached
        open_span = start >= current_start or any(start in channel.pieces for channel in self._channels)
        row = self._compute_row(start, t, current_start)
        if not open_span:
            self._row_cache[start] = row
        return row

    def _compute_row(self, start: int, t: float, current_start: int) -> _Row:
        hour = self._hours.get(start)
        imported = hour.kwh[IMPORT] if hour is not None else 0.0
        exported = hour.kwh[EXPORT] if hour is not None else 0.0
        estimated = hour is not None and hour.estimated
        for index, channel in enumerate(self._channels):
            piece = channel.pieces.get(start)
            if piece is None:
                continue
            if index == IMPORT:
                imported += piece[0]
            else:
                exported += piece[0]
            # An open power estimate counts once the counter is older than the snap window.
            if channel.anchor_t is None or t - channel.anchor_t > SNAP_S or start < current_start:
                estimated = True
        return _Row(start, imported, exported, estimated, hour is not None and hour.gap)

    @staticmethod
    def _period(rows: list[_Row], begin: datetime) -> PeriodTotals:
        return PeriodTotals(
            start=begin,
            import_kwh=sum(row.import_kwh for row in rows),
            export_kwh=sum(row.export_kwh for row in rows),
            estimated=any(row.estimated for row in rows),
            gap=any(row.gap for row in rows),
        )

    def snapshot(
        self, t: float, clock: str = "meter", *, hour_closed: bool = False, save_due: bool = False
    ) -> AccountingSnapshot:
        """The accounting as of moment `t` (epoch seconds)."""
        hour_start, hour_end = self._bounds(t)
        previous_start = self._bounds(hour_start - 1)[0]
        month_start = self._month_start(t)
        previous_month_start = self._previous_month_start(t)
        today = self._day(hour_start)
        starts = set(self._hours)
        for channel in self._channels:
            starts.update(channel.pieces)
        rows = {s: self._row(s, t, hour_start) for s in sorted(starts) if previous_month_start <= s < hour_end}
        month_rows = [row for s, row in rows.items() if s >= month_start]
        previous_month_rows = [row for s, row in rows.items() if s < month_start]
        hour_row = rows.get(hour_start) or _Row(hour_start, 0.0, 0.0, False, False)
        hour = self._period([hour_row], self._local(hour_start))
        previous_row = rows.get(previous_start)
        previous = self._period([previous_row], self._local(previous_start)) if previous_row else None
        power = self._channels[IMPORT].power_w
        remaining = max(0.0, hour_end - t) if power is not None else 0.0
        projected = hour.import_kwh + (power or 0.0) * remaining * _KWH_PER_WS
        capacity = self._capacity(month_rows, hour_start, projected)
        previous_month = previous_capacity = None
        if previous_month_rows:
            previous_month = self._period(previous_month_rows, self._local(previous_month_start))
            previous_capacity = self._capacity(previous_month_rows, None, 0.0)
        return AccountingSnapshot(
            time=self._local(t),
            clock=clock,
            hour=hour,
            previous_hour=previous,
            day=self._period([row for row in month_rows if self._day(row.start) == today], self._day_start(today)),
            month=self._period(month_rows, self._local(month_start)),
            capacity=capacity,
            previous_month=previous_month,
            previous_month_capacity=previous_capacity,
            counters=dict(self.counters),
            hour_closed=hour_closed,
            save_due=save_due,
        )

    # ------------------------------------------------------------------------------- capacity
    def _daily_max(self, rows: list[_Row], exclude: int | None) -> dict[date, _Row]:
        best: dict[date, _Row] = {}
        for row in rows:
            if row.start == exclude:
                continue
            day = self._day(row.start)
            held = best.get(day)
            if held is None or row.import_kwh > held.import_kwh:
                best[day] = row
        return best

    def _top(self, daily: dict[date, _Row]) -> list[_Row]:
        return sorted(daily.values(), key=lambda row: row.import_kwh, reverse=True)[: self.settings.peak_hours]

    @staticmethod
    def _average(top: list[_Row]) -> float:
        return sum(row.import_kwh for row in top) / len(top) if top else 0.0

    def _step(self, average: float) -> int:
        return bisect.bisect_right(self._thresholds, average) + 1

    def _capacity(self, rows: list[_Row], current: int | None, projected: float) -> Capacity:
        """Top N daily-maximum hours. `current` is the open hour (None for a finished month)."""
        top = self._top(self._daily_max(rows, None))
        average = self._average(top)
        step = self._step(average)
        thresholds = self._thresholds
        # The bar the current hour must clear, judged against the month without it.
        threshold = 0.0
        projected_average = average
        if current is not None:
            others = self._daily_max(rows, current)
            today = self._day(current)
            top_others = self._top(others)
            if today in others and any(row is others[today] for row in top_others):
                threshold = others[today].import_kwh  # today is a peak day: beat today's own peak
            elif len(top_others) < self.settings.peak_hours:
                threshold = self._average(top_others)  # a new day joins the average: beat the average
            else:
                threshold = top_others[-1].import_kwh  # beat the lowest of the N
            with_projection = dict(others)
            if today not in with_projection or projected > with_projection[today].import_kwh:
                with_projection[today] = _Row(current, projected, 0.0, True, False)
            projected_average = self._average(self._top(with_projection))
        peaks = tuple(PeakHour(self._local(row.start), row.import_kwh, row.estimated) for row in top)
        return Capacity(
            peaks=peaks,
            average_kwh=average,
            step=step,
            step_min_kwh=thresholds[step - 2] if step >= 2 else 0.0,
            step_max_kwh=thresholds[step - 1] if step - 1 < len(thresholds) else None,
            threshold_kwh=threshold,
            projected_hour_kwh=projected if current is not None else 0.0,
            projected_average_kwh=projected_average,
            projected_step=self._step(projected_average),
            raises_average=current is not None and projected > threshold + _EPSILON_KWH,
        )

    # ------------------------------------------------------------------------------- persistence
    def state(self) -> dict[str, Any]:
        """JSON-able state; `AccountingTracker(settings, state)` restores it."""
        return {
            "version": STATE_VERSION,
            "timezone": self.settings.timezone,
            "last_t": self._last_t,
            "last_reading_t": self._last_reading_t,
            "clock_offset": self._clock_offset,
            "hours": [
                [start, hour.kwh[IMPORT], hour.kwh[EXPORT], int(hour.estimated) | (int(hour.gap) << 1)]
                for start, hour in sorted(self._hours.items())
            ],
            "channels": {
                name: {
                    "anchor_t": channel.anchor_t,
                    "anchor_kwh": channel.anchor_kwh,
                    "pieces": [[start, kwh, seconds] for start, (kwh, seconds) in sorted(channel.pieces.items())],
                    "power_t": channel.power_t,
                    "power_w": channel.power_w,
                }
                for (name, _p, _e), channel in zip(_CHANNELS, self._channels, strict=True)
            },
            "counters": dict(self.counters),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {state.get('version')!r}")
            self._last_t = _opt_float(state.get("last_t"))
            self._last_reading_t = _opt_float(state.get("last_reading_t"))
            self._clock_offset = _opt_float(state.get("clock_offset"))
            for start, imported, exported, flags in state["hours"]:
                self._hours[int(start)] = _Hour([float(imported), float(exported)], bool(flags & 1), bool(flags & 2))
            for (name, _p, _e), channel in zip(_CHANNELS, self._channels, strict=True):
                data = state["channels"][name]
                channel.anchor_t = _opt_float(data["anchor_t"])
                channel.anchor_kwh = _opt_float(data["anchor_kwh"])
                channel.pieces = {int(s): [float(k), float(sec)] for s, k, sec in data["pieces"]}
                channel.power_t = _opt_float(data["power_t"])
                channel.power_w = _opt_float(data["power_w"])
            for key, value in state.get("counters", {}).items():
                if key in self.counters:
                    self.counters[key] = int(value)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"invalid accounting state: {type(exc).__name__}: {exc}") from None
        # Published right after a restart, saved at the next hour end.
        self._last_save_t = self._last_t


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return float(value)


# ------------------------------------------------------------------------------------ storage


class AccountingStore:
    """The tracker state as a JSON file, replaced atomically (tmp + fsync + rename + directory fsync).

    A file that cannot be read or parsed is moved aside (`<name>.corrupt-<n>`) and reported through
    `problem`, never fatal: the counters rebuild the current hour, only history is lost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None  # the last load/save failure, for the log

    def load(self) -> dict[str, Any] | None:
        self.problem = None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"cannot read: {exc.__class__.__name__}")
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            self._set_aside(f"not JSON: {exc}")
            return None
        if not isinstance(data, dict):
            self._set_aside("not a JSON object")
            return None
        return data

    def set_aside(self, reason: str) -> None:
        """Move a file whose content the tracker rejected out of the way."""
        self._set_aside(reason)

    def _set_aside(self, reason: str) -> None:
        for n in range(1, 1000):
            target = self.path.with_name(f"{self.path.name}.corrupt-{n}")
            if not target.exists():
                break
        try:
            os.replace(self.path, target)
            self.problem = f"{self.path}: {reason}; moved to {target.name}"
        except OSError as exc:
            self.problem = f"{self.path}: {reason}; could not move it aside: {exc.strerror}"

    def save(self, state: dict[str, Any]) -> bool:
        self.problem = None
        data = json.dumps(state, separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            with contextlib.suppress(OSError):  # directory fsync: not every filesystem allows it
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            self.problem = f"{self.path}: cannot save: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True


def dumps_snapshot(snapshot: AccountingSnapshot) -> bytes:
    return json.dumps(snapshot.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


class MeterAccounting:
    """Tracker + state file for one meter: what the pipeline holds."""

    def __init__(self, settings: AccountingSettings, path: Path, topic: str) -> None:
        from amsd.log import get_logger  # not at import: the core above stays free of logging

        self._log = get_logger("amsd.accounting")
        self.topic = topic
        self.store = AccountingStore(path)
        state = self.store.load()
        self._report()
        try:
            self.tracker = AccountingTracker(settings, state)
        except ValueError as exc:
            self.store.set_aside(str(exc))
            self._report()
            self.tracker = AccountingTracker(settings, None)
        if state is not None and self.store.problem is None:
            self._log.info("accounting state restored", path=str(path))

    def _report(self) -> None:
        if self.store.problem is not None:
            self._log.warning("accounting state problem", detail=self.store.problem)

    def on_reading(
        self, received: datetime, meter_time: datetime | None, values: dict[str, int | float]
    ) -> tuple[bytes, bool] | None:
        """(payload, persistent) when a snapshot is due; saves the state when that is due too."""
        snapshot = self.tracker.on_reading(received, meter_time, values)
        if snapshot is None:
            return None
        if snapshot.save_due:
            self.save()
        return dumps_snapshot(snapshot), snapshot.hour_closed

    def save(self) -> None:
        if not self.store.save(self.tracker.state()):
            self._log.warning("accounting state not saved", detail=self.store.problem, rate_key="accounting/save")


def state_path(directory: Path, meter_name: str) -> Path:
    return directory / f"accounting-{meter_name}.json"


__all__ = [
    "DEFAULT_THRESHOLDS_KWH",
    "AccountingSettings",
    "AccountingSnapshot",
    "AccountingStore",
    "AccountingTracker",
    "Capacity",
    "MeterAccounting",
    "PeakHour",
    "PeriodTotals",
    "dumps_snapshot",
    "state_path",
]
