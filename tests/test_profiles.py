"""Scaling inferred from physics for Swiss push lists without scalers (amsd.decoder.profiles)."""

from __future__ import annotations

from amsd.decoder.obis import Quantity
from amsd.decoder.profiles import LG_E450, infer_swiss_scales


def test_current_in_hundredths_when_apparent_power_matches() -> None:
    table, decided = infer_swiss_scales(LG_E450, [236, 236, 0], [9, 8, 0], 28)
    assert decided
    assert table[Quantity.CURRENT] == ("A", -2)


def test_current_in_amperes_for_a_large_load() -> None:
    # 229 V x (400 + 200 + 601) A = 275 kVA against 259 kW: currents are whole amperes (E570, CT meter).
    table, decided = infer_swiss_scales(LG_E450, [229, 230, 229], [400, 200, 601], 258_874)
    assert decided
    assert table[Quantity.CURRENT] == ("A", 0)


def test_voltage_in_tenths_when_above_any_mains_voltage() -> None:
    table, _ = infer_swiss_scales(LG_E450, [2357, 0, 0], [6, 0, 0], 11)
    assert table[Quantity.VOLTAGE] == ("V", -1)
    assert table[Quantity.CURRENT] == ("A", -2)


def test_no_evidence_keeps_the_default_and_says_so() -> None:
    table, decided = infer_swiss_scales(LG_E450, [232, 0, 0], [0, 0, 0], 0)
    assert not decided
    assert table == LG_E450
