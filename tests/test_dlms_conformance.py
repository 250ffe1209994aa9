"""DLMS corpus cases through the public Decoder, with the profile a user would configure.

The corpus is third-party data read at run time (tests/corpus.py); nothing from it is copied here.
`auto` covers every case whose scaling can be read from the frame. Where the corpus itself says the
scaling depends on the meter model, the test configures the profile from the case's `meter` field,
as a user would configure their meter: Swedish Kamstrup energy, L+G E570 currents, E360 voltages.
"""

from __future__ import annotations

import pytest

from amsd.decoder import Decoder, Reading, UndecodedFrame
from tests.corpus import Case, case_params, same_value, value_failures

DLMS_TRANSPORTS = {"hdlc", "mbus", "raw-apdu"}
# Only DLMS cases (or the one "corpus missing" parameter): DSMR cases are tests/test_dsmr_conformance.py's.
DLMS_PARAMS = [p for p in case_params() if p.values[0] is None or p.values[0].data.get("transport") in DLMS_TRANSPORTS]


def _has_values(case: Case | None) -> bool:
    return case is None or (bool(case.data.get("expected")) and not case.negative and not case.no_key)


VALUE_PARAMS = [p for p in DLMS_PARAMS if _has_values(p.values[0])]
POSITIONAL_PARAMS = [
    p
    for p in DLMS_PARAMS
    if p.values[0] is None or not (p.values[0].data.get("expected") or p.values[0].negative or p.values[0].no_key)
]


def configured_profile(case: Case) -> str:
    meter = str(case.data.get("meter", ""))
    if "E570" in meter:
        return "lg-e570"
    if "E360" in meter:
        return "lg-e360"
    if case.data.get("country") == "SE" and "Kamstrup" in meter:
        return "kamstrup-se"
    return "auto"


def decode(case: Case, profile: str) -> tuple[list[Reading], list[UndecodedFrame]]:
    decoder = Decoder(case.key, case.auth_key, profile=profile)
    events = decoder.feed(case.input) + decoder.flush()
    return (
        [e for e in events if isinstance(e, Reading)],
        [e for e in events if isinstance(e, UndecodedFrame)],
    )


def dlms_case(case: Case | None) -> Case:
    if case is None:
        pytest.skip("conformance corpus not found")
    if case.data.get("transport") not in DLMS_TRANSPORTS:
        pytest.skip("not a DLMS case")
    return case


@pytest.mark.parametrize("case", VALUE_PARAMS)
def test_expected_values(case: Case | None) -> None:
    case = dlms_case(case)
    expected = case.data.get("expected") or {}
    if not expected or case.negative or case.no_key:
        pytest.skip("no values to check")
    readings, undecoded = decode(case, configured_profile(case))
    assert len(readings) == case.expected_readings, [(e.layer, e.error, e.detail) for e in undecoded]
    units = case.data.get("expected_units") or {}
    failures = value_failures(expected, units, readings)
    assert not failures, failures


@pytest.mark.parametrize("case", VALUE_PARAMS)
def test_reading_metadata(case: Case | None) -> None:
    """Meter id, model and list version agree with the values and the corpus meta."""
    case = dlms_case(case)
    expected = case.data.get("expected") or {}
    if not expected or case.negative or case.no_key:
        pytest.skip("no values to check")
    readings, _ = decode(case, configured_profile(case))
    reading = readings[0]
    list_id = (case.data.get("meta") or {}).get("list_version_id")
    if list_id:
        assert reading.list == list_id
    for code in ("0-0:96.1.0.255", "1-1:0.0.5.255"):
        if code in expected:
            assert reading.meter_id == expected[code]
    if "0-0:96.1.7.255" in expected:
        assert reading.model == expected["0-0:96.1.7.255"]
    if "0-0:1.0.0.255" in expected:
        assert reading.timestamp is not None
        assert same_value(expected["0-0:1.0.0.255"], reading.timestamp.isoformat())


@pytest.mark.parametrize("case", POSITIONAL_PARAMS)
def test_positional_cases_fail_cleanly(case: Case | None) -> None:
    """OBIS-less proprietary lists give a reading or an apdu-layer event, never a framing error."""
    case = dlms_case(case)
    if case.data.get("expected") or case.negative or case.no_key:
        pytest.skip("not a positional/framing-only case")
    readings, undecoded = decode(case, "auto")
    assert readings or undecoded
    assert all(e.layer == "apdu" for e in undecoded), [(e.layer, e.error) for e in undecoded]
