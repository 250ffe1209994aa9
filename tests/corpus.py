"""Access to the shared conformance corpus (third-party data, read at run time, never copied here)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def corpus_dir() -> Path | None:
    configured = os.environ.get("AMSD_CONFORMANCE_DIR")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO.parent / "shared" / "conformance")
    for candidate in candidates:
        cases = candidate / "cases" if (candidate / "cases").is_dir() else candidate
        if cases.is_dir() and any(cases.glob("*.json")):
            return cases
    return None


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any]

    @property
    def input(self) -> bytes:
        if self.data.get("input_hex"):
            return bytes.fromhex(re.sub(r"\s+", "", self.data["input_hex"]))
        return str(self.data["input_text"]).encode("latin-1")

    @property
    def key(self) -> str | None:
        return self.data.get("key_hex") or None

    @property
    def auth_key(self) -> str | None:
        return self.data.get("auth_key_hex") or None

    @property
    def framing(self) -> dict[str, Any]:
        return self.data.get("expected_framing") or {}

    @property
    def negative(self) -> bool:
        return any(
            self.framing.get(k) is False for k in ("crc_ok", "fcs_ok", "hcs_ok", "checksum_ok", "reading")
        )

    @property
    def no_key(self) -> bool:
        return self.framing.get("no_key") is True or (
            bool(self.data.get("encrypted")) and not self.key and self.data.get("transport") != "dsmr"
        )

    @property
    def expected_readings(self) -> int:
        meta = self.data.get("meta") or {}
        return int(self.framing.get("readings") or meta.get("notifications_decoded") or 1)


def load_cases() -> list[Case]:
    directory = corpus_dir()
    if directory is None:
        return []
    cases = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        cases.append(Case(data.get("id") or path.stem, data))
    return cases


def case_params() -> list[Any]:
    """pytest parameters, or one skipped parameter saying why there are none."""
    cases = load_cases()
    if not cases:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason="conformance corpus not found: put it at ../shared/conformance or set "
                    "AMSD_CONFORMANCE_DIR"
                ),
                id="no-corpus",
            )
        ]
    return [pytest.param(case, id=case.id) for case in cases]


def _parse_iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def same_value(want: Any, got: Any) -> bool:
    """The corpus' comparison rules (tolerance 1e-9; timestamps as instants when both are aware)."""
    if isinstance(want, bool) or want is None:
        return bool(want == got)
    if isinstance(want, int | float):
        if isinstance(got, bool) or not isinstance(got, int | float) or math.isnan(float(got)):
            return False
        diff = abs(float(got) - float(want))
        return diff <= 1e-9 or diff <= 1e-9 * abs(float(want))
    if isinstance(want, str):
        if not isinstance(got, str):
            return False
        if _ISO.match(want) and _ISO.match(got):
            a, b = _parse_iso(want), _parse_iso(got)
            if a is not None and b is not None:
                if a.tzinfo is not None and b.tzinfo is not None:
                    return a == b
                return a.replace(tzinfo=None) == b.replace(tzinfo=None)
        return want == got
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_value, want, got))
    return bool(want == got)


def value_failures(expected: dict[str, Any], units: dict[str, str], readings: list[Any]) -> list[str]:
    """Every expected OBIS value (first reading that has it) compared by the corpus rules, with unit."""
    failures = []
    for obis, want in expected.items():
        value = next((r.values[obis] for r in readings if obis in r.values), None)
        if value is None:
            failures.append(f"{obis} missing")
        elif not same_value(want, value.value):
            failures.append(f"{obis}={value.value!r}, want {want!r}")
        elif obis in units and units[obis] != value.unit:
            failures.append(f"{obis} unit {value.unit!r}, want {units[obis]!r}")
    return failures
