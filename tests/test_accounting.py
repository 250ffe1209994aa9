"""The accounting core with synthetic counter streams: no I/O except the state-file tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from amsd.accounting import (
    AccountingSettings,
    AccountingSnapshot,
    AccountingStore,
    AccountingTracker,
    MeterAccounting,
    state_path,
)

OSLO = ZoneInfo("Europe/Oslo")
Power = Callable[[datetime], tuple[float, float]]  # local time -> (import W, export W)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=OSLO)


def constant(import_w: float, export_w: float = 0.0) -> Power:
    return lambda _t: (import_w, export_w)


def by_hour(table: dict[int, float], default: float = 1000.0) -> Power:
    """Import power by local hour of day."""
    return lambda t: (table.get(t.hour, default), 0.0)


class Meter:
    """A synthetic meter: power held constant between readings, counters that integrate it exactly.

    `counters`: "every" (DSMR: every reading), "hourly" (Norwegian list 3 at hh:00:0x), "none".
    `naive`: the meter's clock is local wall time without offset (Aidon, Kaifa, Kamstrup).
    `power_error`: factor on the power the meter reports against what it counts (tests correction).
    """

    def __init__(
        self,
        tracker: AccountingTracker,
        start: datetime,
        *,
        counters: str = "every",
        step_s: float = 10.0,
        naive: bool = False,
        list3_delay_s: float = 2.0,
        import_kwh: float = 10_000.0,
        export_kwh: float = 100.0,
        power_error: float = 1.0,
    ) -> None:
        self.tracker = tracker
        self.t = start.astimezone(UTC)
        self.counters = counters
        self.step = timedelta(seconds=step_s)
        self.naive = naive
        self.delay = list3_delay_s
        self.energy = [import_kwh, export_kwh]
        self.power_error = power_error
        self.last: AccountingSnapshot | None = None
        self.snapshots: list[AccountingSnapshot] = []

    def reading(self, power: Power, *, with_counters: bool | None = None, **extra: float) -> AccountingSnapshot | None:
        imp, exp = power(self.t.astimezone(OSLO))
        values: dict[str, int | float] = {
            "power_import": imp * self.power_error,
            "power_export": exp * self.power_error,
        }
        moment = self.t.astimezone(OSLO)
        if with_counters is None:
            if self.counters == "every":
                with_counters = True
            elif self.counters == "hourly":
                with_counters = moment.minute == 0 and moment.second == self.delay
            else:
                with_counters = False
        if with_counters:
            values["energy_import"] = round(self.energy[0], 3)
            values["energy_export"] = round(self.energy[1], 3)
        values.update(extra)
        meter_time = moment.replace(tzinfo=None) if self.naive else moment
        snapshot = self.tracker.on_reading(self.t, meter_time, values)
        if snapshot is not None:
            self.last = snapshot
            self.snapshots.append(snapshot)
        return snapshot

    def advance(self, power: Power, seconds: float) -> None:
        imp, exp = power(self.t.astimezone(OSLO))
        self.energy[0] += imp * seconds / 3_600_000
        self.energy[1] += exp * seconds / 3_600_000
        self.t += timedelta(seconds=seconds)

    def run(self, until: datetime, power: Power, *, read: bool = True) -> AccountingSnapshot:
        """Readings every step up to and including `until`; `read=False` is a silent line (a gap)."""
        end = until.astimezone(UTC)
        while self.t < end:
            if read:
                self.reading(power)
            step = min(self.step.total_seconds(), (end - self.t).total_seconds())
            # Norwegian list 3 comes a few seconds after the hour: land a reading exactly there.
            moment = self.t.astimezone(OSLO)
            if self.counters == "hourly":
                to_list3 = (3600 - (moment.minute * 60 + moment.second)) % 3600 + self.delay
                if 0 < to_list3 < step:
                    step = to_list3
            self.advance(power, step)
        if read:
            self.reading(power)
        return self.snapshot()

    def snapshot(self) -> AccountingSnapshot:
        return self.tracker.snapshot(self.t.timestamp())


def tracker(**settings: Any) -> AccountingTracker:
    # Snapshots every 10 minutes keep these tests fast; hour ends are published anyway.
    settings.setdefault("publish_interval_s", 600.0)
    return AccountingTracker(AccountingSettings(**settings))


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def hours_of(snapshot_tracker: AccountingTracker, day: datetime) -> dict[int, float]:
    """Import per hour of a local day from the tracker's state (hour start epoch -> kWh). Epochs, not
    local datetimes: the two 02:00 hours of a fall-back day compare equal as local datetimes."""
    state = snapshot_tracker.state()
    start = day.replace(hour=0, minute=0, second=0).timestamp()
    end = (day.replace(hour=0, minute=0, second=0) + timedelta(days=1)).timestamp()
    return {s: imp for s, imp, _exp, _flags in state["hours"] if start <= s < end}


def flags_of(snapshot_tracker: AccountingTracker) -> dict[int, int]:
    return {s: flags for s, _imp, _exp, flags in snapshot_tracker.state()["hours"]}


# ------------------------------------------------------------------------------------ counters every frame


def test_counters_every_frame_give_exact_hours() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 0, 0), counters="every", step_s=30)
    profile = by_hour({7: 3000.0, 8: 4500.0, 18: 6000.0}, default=1200.0)
    meter.run(local(2026, 5, 5, 0, 0), profile)
    hours = hours_of(t, local(2026, 5, 4))
    assert len(hours) == 24
    for start, kwh in hours.items():
        expected = {7: 3.0, 8: 4.5, 18: 6.0}.get(datetime.fromtimestamp(start, OSLO).hour, 1.2)
        assert kwh == pytest.approx(expected, abs=1e-6), start
    snap = meter.snapshot()
    assert snap.previous_hour is not None
    assert snap.previous_hour.start == local(2026, 5, 4, 23)
    assert not snap.previous_hour.estimated and not snap.previous_hour.gap
    # The new day has just begun: yesterday's 24 hours are in the month.
    assert snap.month.import_kwh == pytest.approx(21 * 1.2 + 3.0 + 4.5 + 6.0, abs=1e-6)
    assert snap.day.start == local(2026, 5, 5)


def test_the_first_hour_is_partial_and_flagged() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 10, 20), counters="every")
    snap = meter.run(local(2026, 5, 4, 10, 50), constant(2000.0))
    assert snap.hour.gap  # amsd started 20 minutes into the hour
    assert snap.hour.import_kwh == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------------------------ Norwegian list 3


def test_hourly_counters_estimate_then_correct() -> None:
    t = tracker()
    # The meter counts 10 % more than the power it reports: the estimate is low until list 3 arrives.
    meter = Meter(t, local(2026, 5, 4, 9, 0, 2), counters="hourly", naive=True, power_error=0.9)
    meter.reading(constant(2000.0), with_counters=True)  # list 3 of 09:00: the baseline
    meter.run(local(2026, 5, 4, 9, 30), constant(2000.0))
    mid = meter.snapshot()
    assert mid.hour.estimated
    assert mid.hour.import_kwh == pytest.approx(0.9 * 2.0 * 0.5, abs=0.005)
    # The list 1 of 10:00:00 comes before list 3: the closed hour is still an estimate.
    meter.run(local(2026, 5, 4, 10, 0, 0), constant(2000.0))
    before = meter.last
    assert before is not None and before.hour_closed and before.time == local(2026, 5, 4, 10)
    assert before.previous_hour is not None
    assert before.previous_hour.estimated
    assert before.previous_hour.import_kwh == pytest.approx(1.8, abs=0.01)
    # 10:00:02: list 3 corrects it to what the meter counted.
    meter.advance(constant(2000.0), 2)
    after = meter.reading(constant(2000.0))
    assert after is not None and after.hour_closed and after.save_due
    assert after.previous_hour is not None
    assert not after.previous_hour.estimated
    assert after.previous_hour.import_kwh == pytest.approx(2.0, abs=0.002)
    assert after.previous_hour.start == local(2026, 5, 4, 9)


def test_hourly_counters_every_hour_exact_over_a_day() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 3, 23, 0, 2), counters="hourly", naive=True)
    meter.reading(constant(500.0), with_counters=True)
    profile = by_hour({h: 400.0 + 150.0 * h for h in range(24)})
    meter.run(local(2026, 5, 5, 0, 0, 3), profile)
    hours = hours_of(t, local(2026, 5, 4))
    assert len(hours) == 24
    for start, kwh in hours.items():
        # The span runs hh:00:02 -> hh+1:00:02: two seconds of the previous hour's power ride along.
        hour = datetime.fromtimestamp(start, OSLO).hour
        assert kwh == pytest.approx((400.0 + 150.0 * hour) / 1000, abs=0.003), hour
    snap = meter.snapshot()
    assert snap.previous_hour is not None and not snap.previous_hour.estimated


def test_repeated_list3_counter_is_ignored() -> None:
    """Aidon repeats last hour's counters in some list 3 frames: not a zero hour followed by a double one."""
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 9, 0, 2), counters="hourly", naive=True)
    meter.reading(constant(3000.0), with_counters=True)
    stale = [meter.energy[0], meter.energy[1]]
    meter.run(local(2026, 5, 4, 10, 0, 1), constant(3000.0))
    meter.advance(constant(3000.0), 1)
    meter.reading(constant(3000.0), energy_import=round(stale[0], 3), energy_export=round(stale[1], 3))
    meter.run(local(2026, 5, 4, 11, 0, 3), constant(3000.0))
    hours = hours_of(t, local(2026, 5, 4))
    assert t.counters["stale"] >= 1
    assert hours[ts(local(2026, 5, 4, 9))] == pytest.approx(3.0, abs=0.02)
    assert hours[ts(local(2026, 5, 4, 10))] == pytest.approx(3.0, abs=0.02)


# ------------------------------------------------------------------------------------ DST


def test_spring_forward_day_has_23_hours() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 3, 28, 23, 0), counters="every", step_s=60)
    meter.run(local(2026, 3, 30, 0, 0), constant(1000.0))
    hours = hours_of(t, local(2026, 3, 29))
    assert len(hours) == 23
    assert all(kwh == pytest.approx(1.0, abs=1e-6) for kwh in hours.values())
    assert 2 not in {datetime.fromtimestamp(h, OSLO).hour for h in hours}  # 02:00 never happened
    day = t.snapshot(local(2026, 3, 29, 23, 59).timestamp()).day
    assert day.import_kwh == pytest.approx(23.0, abs=1e-6)


@pytest.mark.parametrize("naive", [False, True], ids=["aware", "naive-local"])
def test_fall_back_day_has_25_hours(naive: bool) -> None:
    t = tracker()
    meter = Meter(t, local(2026, 10, 24, 23, 0), counters="every", step_s=60, naive=naive)
    profile = by_hour({2: 2500.0}, default=1000.0)
    meter.run(local(2026, 10, 26, 0, 0), profile)
    hours = hours_of(t, local(2026, 10, 25))
    assert len(hours) == 25
    twos = sorted(start for start in hours if datetime.fromtimestamp(start, OSLO).hour == 2)
    offsets = [datetime.fromtimestamp(start, OSLO).utcoffset() for start in twos]
    assert offsets == [timedelta(hours=2), timedelta(hours=1)]
    assert all(hours[start] == pytest.approx(2.5, abs=1e-6) for start in twos)
    day = t.snapshot(local(2026, 10, 25, 23, 59).timestamp()).day
    assert day.import_kwh == pytest.approx(23 * 1.0 + 2 * 2.5, abs=1e-6)
    assert t.counters["clock_backwards"] == 0


# ------------------------------------------------------------------------------------ month rollover


def test_month_rollover() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 1, 30, 0, 0), counters="every", step_s=60)
    profile = by_hour({19: 7000.0}, default=800.0)
    meter.run(local(2026, 2, 1, 2, 0), profile)
    snap = meter.run(local(2026, 2, 1, 2, 30), profile)
    assert snap.month.start == local(2026, 2, 1)
    assert snap.month.import_kwh == pytest.approx(2 * 0.8 + 0.4, abs=0.01)
    assert snap.previous_month is not None and snap.previous_month_capacity is not None
    assert snap.previous_month.start == local(2026, 1, 1)
    assert snap.previous_month.import_kwh == pytest.approx(2 * (23 * 0.8 + 7.0), abs=1e-6)
    # January had only two days: its peaks are the 19:00 hours of both.
    assert [p.import_kwh for p in snap.previous_month_capacity.peaks] == pytest.approx([7.0, 7.0])
    assert all(p.start.month == 2 for p in snap.capacity.peaks)
    body = snap.to_json()
    assert body["previous_month"]["peak_average_kwh"] == 7.0
    assert body["month"]["start"] == "2026-02-01T00:00:00+01:00"


# ------------------------------------------------------------------------------------ gaps, restart


def test_missing_hours_are_spread_and_marked() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 9, 0, 2), counters="hourly", naive=True)
    meter.reading(constant(2000.0), with_counters=True)
    meter.run(local(2026, 5, 4, 10, 30), constant(2000.0))
    counter_at_10 = None
    for snap in meter.snapshots:
        if snap.previous_hour is not None and snap.previous_hour.start == local(2026, 5, 4, 9):
            counter_at_10 = snap
    assert counter_at_10 is not None
    meter.run(local(2026, 5, 4, 13, 30), constant(2000.0), read=False)  # line dead for three hours
    meter.run(local(2026, 5, 4, 14, 0, 3), constant(2000.0))
    hours = hours_of(t, local(2026, 5, 4))
    flags = flags_of(t)
    for hour in (10, 11, 12, 13):
        assert hours[ts(local(2026, 5, 4, hour))] == pytest.approx(2.0, abs=0.01), hour
        assert flags[ts(local(2026, 5, 4, hour))] & 2, f"{hour}: gap flag"
    for hour in (11, 12):
        assert flags[ts(local(2026, 5, 4, hour))] & 1, f"{hour}: estimated flag"
    assert not flags[ts(local(2026, 5, 4, 9))] & 3
    # Nothing lost or invented: the day holds exactly what the counter rose by.
    assert sum(hours.values()) == pytest.approx(5 * 2.0, abs=0.01)


def test_restart_mid_hour_restores_from_state() -> None:
    settings = AccountingSettings()
    first = AccountingTracker(settings)
    meter = Meter(first, local(2026, 5, 4, 9, 0, 2), counters="hourly", naive=True)
    meter.reading(constant(2400.0), with_counters=True)
    meter.run(local(2026, 5, 4, 10, 25), constant(2400.0))
    saved = json.loads(json.dumps(first.state()))  # through JSON, like the state file
    # Power cut: eight minutes without anything, then a fresh process with the saved state.
    meter.advance(constant(2400.0), 480)
    second = AccountingTracker(settings, saved)
    meter.tracker = second
    meter.run(local(2026, 5, 4, 11, 0, 3), constant(2400.0))
    hours = hours_of(second, local(2026, 5, 4))
    assert hours[ts(local(2026, 5, 4, 9))] == pytest.approx(2.4, abs=0.002)
    assert hours[ts(local(2026, 5, 4, 10))] == pytest.approx(2.4, abs=0.002)  # the counters restore it
    snap = meter.snapshot()
    assert snap.previous_hour is not None and not snap.previous_hour.estimated
    assert snap.previous_hour.gap  # amsd did miss part of it, and says so


def test_restart_without_state_mid_hour_starts_partial() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 10, 25), counters="hourly", naive=True)
    meter.run(local(2026, 5, 4, 10, 59), constant(1800.0))
    snap = meter.snapshot()
    assert snap.hour.estimated and snap.hour.gap
    assert snap.hour.import_kwh == pytest.approx(1.8 * 34 / 60, abs=0.01)


# ------------------------------------------------------------------------------------ counter anomalies


def test_counter_reset_is_a_new_baseline() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 8, 0), counters="every", step_s=30)
    meter.run(local(2026, 5, 4, 9, 30), constant(2000.0))
    meter.energy = [0.0, 0.0]  # meter swapped: the new one starts at 0
    snap = meter.run(local(2026, 5, 4, 11, 0), constant(2000.0))
    hours = hours_of(t, local(2026, 5, 4))
    assert t.counters["resets"] == 1
    assert all(kwh >= 0 for kwh in hours.values())
    for hour in (8, 9, 10):
        assert hours[ts(local(2026, 5, 4, hour))] == pytest.approx(2.0, abs=0.01), hour
    assert snap.counters["resets"] == 1


def test_implausible_jump_is_a_new_baseline() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 8, 0), counters="every", step_s=30)
    meter.run(local(2026, 5, 4, 8, 30), constant(2000.0))
    meter.energy[0] += 5_000.0  # a garbled high byte, or a swap to a meter with a higher count
    meter.run(local(2026, 5, 4, 9, 30), constant(2000.0))
    hours = hours_of(t, local(2026, 5, 4))
    assert t.counters["jumps"] == 1
    assert hours[ts(local(2026, 5, 4, 8))] == pytest.approx(2.0, abs=0.01)


def test_meter_clock_far_off_falls_back_to_host_clock() -> None:
    t = tracker(publish_interval_s=0.0)
    host = local(2026, 5, 4, 12, 0, 5).astimezone(UTC)
    snap = t.on_reading(host, datetime(2000, 1, 1, 0, 0), {"power_import": 100})
    assert snap is not None and snap.clock == "host"
    assert snap.time == host.astimezone(OSLO)
    # Lists without a clock between lists with one use the host clock shifted by the meter's offset.
    t2 = tracker(publish_interval_s=0.0)
    t2.on_reading(host, local(2026, 5, 4, 12, 0, 0), {"power_import": 100})
    snap2 = t2.on_reading(host + timedelta(seconds=30), None, {"power_import": 100})
    assert snap2 is not None and snap2.clock == "meter"
    assert snap2.time == local(2026, 5, 4, 12, 0, 30)  # host + 30 s, minus the meter's 5 s


# ------------------------------------------------------------------------------------ capacity tariff


def _day_with_peaks(meter: Meter, day: int, peaks: dict[int, float]) -> None:
    meter.run(local(2026, 5, day + 1, 0, 0), by_hour(peaks, default=500.0))


def test_two_peaks_on_one_day_count_once() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    _day_with_peaks(meter, 1, {8: 5000.0, 18: 6000.0})  # two high hours, one day
    _day_with_peaks(meter, 2, {17: 3000.0})
    _day_with_peaks(meter, 3, {7: 2000.0})
    _day_with_peaks(meter, 4, {9: 1000.0})
    snap = meter.run(local(2026, 5, 5, 0, 30), constant(500.0))
    cap = snap.capacity
    assert [p.import_kwh for p in cap.peaks] == pytest.approx([6.0, 3.0, 2.0])
    assert [p.start for p in cap.peaks] == [local(2026, 5, 1, 18), local(2026, 5, 2, 17), local(2026, 5, 3, 7)]
    assert cap.average_kwh == pytest.approx(11.0 / 3)
    assert (cap.step, cap.step_min_kwh, cap.step_max_kwh) == (2, 2.0, 5.0)
    body = snap.to_json()["capacity"]
    assert body["peaks"][0] == {
        "start": "2026-05-01T18:00:00+02:00",
        "day": "2026-05-01",
        "import_kwh": 6.0,
        "estimated": False,
    }


def test_fewer_days_than_peak_hours_average_what_there_is() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    snap = meter.run(local(2026, 5, 1, 12, 0), by_hour({9: 4000.0}, default=500.0))
    assert [p.import_kwh for p in snap.capacity.peaks] == pytest.approx([4.0])
    assert snap.capacity.average_kwh == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("average", "step", "low", "high"),
    [(0.0, 1, 0.0, 2.0), (1.99, 1, 0.0, 2.0), (2.0, 2, 2.0, 5.0), (99.0, 9, 75.0, 100.0), (150.0, 10, 100.0, None)],
)
def test_steps_default_thresholds(average: float, step: int, low: float, high: float | None) -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    snap = meter.run(local(2026, 5, 1, 1, 0), constant(average * 1000.0))
    snap = meter.run(local(2026, 5, 1, 1, 1), constant(0.0))
    cap = snap.capacity
    assert cap.average_kwh == pytest.approx(average, abs=1e-6)
    assert (cap.step, cap.step_min_kwh, cap.step_max_kwh) == (step, low, high)


def test_steps_custom_thresholds() -> None:
    t = tracker(thresholds_kwh=(3.0, 6.0), peak_hours=1)
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    snap = meter.run(local(2026, 5, 1, 1, 1), by_hour({0: 7000.0}, default=0.0))
    assert (snap.capacity.step, snap.capacity.step_min_kwh, snap.capacity.step_max_kwh) == (3, 6.0, None)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        AccountingSettings(thresholds_kwh=(5.0, 2.0))
    with pytest.raises(ValueError):
        AccountingSettings(peak_hours=0)
    with pytest.raises(Exception):  # noqa: B017 - zoneinfo raises its own error type
        AccountingSettings(timezone="Mars/Olympus_Mons")


def test_projection_says_whether_this_hour_raises_the_average() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    _day_with_peaks(meter, 1, {18: 4000.0})
    _day_with_peaks(meter, 2, {18: 5000.0})
    _day_with_peaks(meter, 3, {18: 6000.0})
    # Day 4, half past eight: 0.5 kWh so far at 500 W.
    snap = meter.run(local(2026, 5, 4, 8, 30), constant(500.0))
    cap = snap.capacity
    assert cap.threshold_kwh == pytest.approx(4.0, abs=1e-6)  # beat the lowest of the three days
    assert cap.projected_hour_kwh == pytest.approx(0.5, abs=0.01)
    assert not cap.raises_average
    # Switch on 9 kW: 0.25 + 4.5 = 4.75 kWh projected, above 4.
    snap = meter.run(local(2026, 5, 4, 8, 31), constant(9000.0))
    snap = meter.run(local(2026, 5, 4, 8, 32), constant(9000.0))
    cap = snap.capacity
    assert cap.raises_average
    assert cap.projected_hour_kwh == pytest.approx(0.25 + 0.3 + 28 / 60 * 9.0, abs=0.02)
    assert cap.projected_average_kwh == pytest.approx((cap.projected_hour_kwh + 5.0 + 6.0) / 3, abs=1e-6)
    assert cap.projected_step == 3  # 5.25 kWh: the 5-10 step


def test_projection_against_todays_own_peak() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 1, 0, 0), counters="every", step_s=60)
    _day_with_peaks(meter, 1, {18: 4000.0})
    meter.run(local(2026, 5, 2, 10, 0), by_hour({7: 8000.0}, default=500.0))
    cap = meter.run(local(2026, 5, 2, 10, 10), constant(500.0)).capacity
    assert cap.threshold_kwh == pytest.approx(8.0, abs=1e-6)  # today already holds 8 kWh at 07:00
    assert not cap.raises_average


# ------------------------------------------------------------------------------------ publishing cadence


def test_snapshots_are_throttled_but_hour_ends_always_published() -> None:
    t = tracker(publish_interval_s=60.0)
    meter = Meter(t, local(2026, 5, 4, 9, 58), counters="every", step_s=5)
    meter.run(local(2026, 5, 4, 10, 3), constant(1000.0))
    times = [s.time for s in meter.snapshots]
    assert len(times) <= 8
    assert any(s.hour_closed and s.time == local(2026, 5, 4, 10, 0) for s in meter.snapshots)


# ------------------------------------------------------------------------------------ state file


def test_store_roundtrip_and_atomic(tmp_path: Path) -> None:
    store = AccountingStore(state_path(tmp_path / "state", "house"))
    assert store.load() is None
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 9, 0), counters="every")
    meter.run(local(2026, 5, 4, 11, 0), constant(1500.0))
    assert store.save(t.state())
    assert store.path.name == "accounting-house.json"
    assert [p.name for p in store.path.parent.iterdir()] == ["accounting-house.json"]
    restored = AccountingTracker(AccountingSettings(), store.load())
    assert restored.state() == t.state()
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"version": 1, "hours": 5}', b"\xff\xfe"])
def test_corrupt_state_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    path = state_path(tmp_path, "house")
    path.write_bytes(content)
    accounting = MeterAccounting(AccountingSettings(), path, "amsd/house/accounting")
    assert not path.exists()
    assert (tmp_path / "accounting-house.json.corrupt-1").read_bytes() == content
    # It works from scratch, and saves a good file again.
    host = local(2026, 5, 4, 9, 0).astimezone(UTC)
    out = accounting.on_reading(host, None, {"power_import": 100, "energy_import": 5.0})
    assert out is not None
    payload, persistent = out
    assert json.loads(payload)["hour"]["start"] == "2026-05-04T09:00:00+02:00"
    assert persistent
    assert json.loads(path.read_text())["version"] == 1


def test_save_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = AccountingStore(blocker / "sub" / "accounting.json")  # parent is a file
    assert not store.save({"version": 1})
    assert store.problem is not None and "cannot save" in store.problem


def test_payload_shape() -> None:
    t = tracker()
    meter = Meter(t, local(2026, 5, 4, 9, 0), counters="every")
    snap = meter.run(local(2026, 5, 4, 10, 30), constant(1500.0, 200.0))
    body = snap.to_json()
    assert set(body) == {
        "ts", "clock", "hour", "previous_hour", "day", "month", "capacity", "previous_month", "counters",
    }  # fmt: skip
    assert set(body["hour"]) == {"start", "import_kwh", "export_kwh", "estimated", "gap"}
    assert body["hour"]["start"] == "2026-05-04T10:00:00+02:00"
    assert body["previous_hour"]["import_kwh"] == 1.5
    assert body["previous_hour"]["export_kwh"] == 0.2
    assert body["day"]["start"] == "2026-05-04T00:00:00+02:00"
    assert set(body["capacity"]) >= {"peaks", "average_kwh", "step", "threshold_kwh", "raises_average"}
    json.dumps(body, allow_nan=False)


# ------------------------------------------------------------------------------------ config, pipeline, HA


def test_config_section() -> None:
    from pydantic import ValidationError

    from amsd.config import AccountingConfig, AmsdConfig, MeterConfig

    config = AccountingConfig()
    assert not config.enabled and config.timezone == "Europe/Oslo" and config.peak_hours == 3
    assert config.thresholds_kwh == [2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 50.0, 75.0, 100.0]
    bad: dict[str, Any]
    for bad in ({"timezone": "Europe/Atlantis"}, {"thresholds_kwh": [5, 2]}, {"thresholds_kwh": []}, {"peak_hours": 0}):
        with pytest.raises(ValidationError):
            AccountingConfig(**bad)
    with pytest.raises(ValidationError, match="unknown meter"):
        AmsdConfig(meters=[MeterConfig(name="a", port="/dev/ttyUSB0")], accounting=AccountingConfig(meters=["b"]))


def test_pipeline_publishes_accounting_and_skips_glitched_counters(tmp_path: Path) -> None:
    from amsd.decoder import Decoder, Reading, Value
    from amsd.pipeline import MeterOptions, MeterPipeline
    from amsd.publish import OutMessage

    sent: list[OutMessage] = []
    clock = [local(2026, 5, 4, 9, 0, 2).astimezone(UTC)]
    accounting = MeterAccounting(
        AccountingSettings(publish_interval_s=0.0), state_path(tmp_path, "m"), "amsd/m/accounting"
    )
    pipeline = MeterPipeline(
        MeterOptions(name="m"), Decoder(), sent.append, wall_clock=lambda: clock[0], accounting=accounting
    )

    def reading(energy: float | None, power: int = 2000) -> None:
        values = {"1-0:1.7.0.255": Value(power, "W")}
        if energy is not None:
            values["1-0:1.8.0.255"] = Value(energy, "kWh")
        pipeline.handle(Reading(values, meter_id="123", timestamp=None))

    reading(100.0)
    clock[0] += timedelta(minutes=30)
    reading(0.0)  # a glitchy frame: held back by the counter guard, so no reset in the accounting
    clock[0] += timedelta(minutes=30)
    reading(102.0)
    bodies = [json.loads(m.payload) for m in sent if m.topic == "amsd/m/accounting"]
    assert all(m.retain for m in sent if m.topic == "amsd/m/accounting")
    assert bodies[-1]["counters"]["resets"] == 0
    # 09:00:02 -> 10:00:02: the two seconds past 10:00 belong to the new hour.
    assert bodies[-1]["previous_hour"]["import_kwh"] == pytest.approx(2.0, abs=0.002)
    assert bodies[-1]["clock"] == "host"
    discovery = pipeline.discovery_message()
    assert discovery is not None
    assert "accounting_hour_import" in json.loads(discovery.payload)["components"]


def test_homeassistant_components_are_valid() -> None:
    from amsd import homeassistant
    from tests.ha_schema import validate_device_discovery

    meter: dict[str, Any] = {
        "meter_name": "house",
        "meter_id": "123",
        "manufacturer": None,
        "model": None,
        "keys": ["power_import"],
        "topic_prefix": "amsd",
        "discovery_prefix": "homeassistant",
    }
    _topic, payload = homeassistant.discovery(**meter, accounting=True)
    body = json.loads(payload)
    assert validate_device_discovery(body) == []
    hour = body["components"]["accounting_hour_import"]
    assert hour["state_topic"] == "amsd/house/accounting"
    assert (hour["device_class"], hour["unit_of_measurement"], hour["state_class"]) == ("energy", "kWh", "total")
    assert hour["last_reset_value_template"] == "{{ value_json.hour.start }}"
    assert body["components"]["accounting_step"]["value_template"] == "{{ value_json.capacity.step }}"
    _topic, plain = homeassistant.discovery(**meter)
    assert not any(key.startswith("accounting_") for key in json.loads(plain)["components"])
