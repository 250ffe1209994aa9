"""Every DSMR case of the shared conformance corpus through `parse_telegram` (corpus read at run time)."""

from __future__ import annotations

from typing import Any

import pytest

from amsd.decoder.dsmr import parse_telegram
from amsd.decoder.events import Reading, UndecodedFrame
from tests.corpus import Case, load_cases, same_value


def _dsmr_params() -> list[Any]:
    cases = [case for case in load_cases() if case.data.get("transport") == "dsmr"]
    if not cases:
        reason = "conformance corpus not found: put it at ../shared/conformance or set AMSD_CONFORMANCE_DIR"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-corpus")]
    return [pytest.param(case, id=case.id) for case in cases]


@pytest.mark.parametrize("case", _dsmr_params())
def test_dsmr_case(case: Case) -> None:
    event = parse_telegram(case.input)
    if case.negative:
        assert isinstance(event, UndecodedFrame), "a telegram with a wrong CRC must not give a reading"
        assert event.error == "crc_mismatch"
        assert event.raw == case.input
        return
    assert isinstance(event, Reading), f"{event.error}: {event.detail}"
    assert event.protocol == "dsmr"
    assert event.raw == case.input
    framing = case.framing
    if "crc_present" in framing:
        assert event.crc_present is framing["crc_present"]
    mismatches = []
    for obis, want in case.data["expected"].items():
        got = event.values.get(obis)
        if got is None or not same_value(want, got.value):
            mismatches.append(f"{obis}: want {want!r}, got {got.value if got else 'nothing'!r}")
    for obis, unit in case.data.get("expected_units", {}).items():
        got = event.values.get(obis)
        if got is None or got.unit != unit:
            mismatches.append(f"{obis}: want unit {unit!r}, got {got.unit if got else 'nothing'!r}")
    assert not mismatches, "\n".join(mismatches)
    clock = case.data["expected"].get("0-0:1.0.0.255")
    if clock is not None:
        assert event.timestamp is not None
        assert same_value(clock, event.timestamp.isoformat())


@pytest.mark.parametrize("case", _dsmr_params())
def test_dsmr_case_required_crc(case: Case) -> None:
    """With require_crc, exactly the telegrams that carry a valid CRC give readings."""
    event = parse_telegram(case.input, require_crc=True)
    if case.negative:
        assert isinstance(event, UndecodedFrame)
    elif case.framing.get("crc_present") is False:
        assert isinstance(event, UndecodedFrame) and event.error == "crc_missing"
    else:
        assert isinstance(event, Reading)
