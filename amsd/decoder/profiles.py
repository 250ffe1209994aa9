"""Scaling tables for lists that carry no {scaler, unit} of their own, and the rules that pick them.

A frame's own scaler/unit always wins. Only when a value comes without one does a table apply, and
only when the frame says which meter family sent it. Each rule names its evidence and its source:

- `kaifa`: list id `KFM_001` (NO positional lists, SE lists with OBIS codes). W and var x1,
  A x0.001, V x0.1, Wh -> kWh. Source: FIELD-NOTES "Kaifa NO"; corpus README (KFM_001 scalers).
- `kamstrup`: list id `Kamstrup_V0001`. W and var x1, A x0.01, V x1, energy in 10 Wh -> x0.01 kWh.
  Source: FIELD-NOTES "Kamstrup: NO"; corpus README. Profile `kamstrup-se`: energy in Wh -> x0.001
  kWh (FIELD-NOTES "SE Kamstrup energy is in Wh"; the frames are identical, so it cannot be seen).
- `swiss` (L+G E450 convention): a capture-object descriptor array first (VSE push list), or an L+G
  system title / logical device name (`LGZ...`) with OBIS/value pairs and no scalers ("no push
  list"). W and var x1, Wh/varh -> kWh/kvarh, A x0.01, V x1, power factor x0.001.
  Source: corpus README ("Swiss scalers as assumed by smartmeter-datacollector").
- `iskra` (AM550): as `swiss` with a logical device name or system title starting `ISK`; V x0.1.
  Source: corpus README (AM550 voltage x0.1).

Not decidable from the frame, hence profile names (default `auto` = Norwegian Kamstrup and L+G E450):
`kamstrup-se` (Swedish Kamstrup energy in Wh), `lg-e570` (E570 current x1 A), `lg-e360` (E360 voltage
x0.1 V). `raw` disables the tables: values without a scaler in the frame are published unscaled and
without unit (e.g. Danish Kamstrup CT meters, whose scaling is undocumented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from amsd.decoder.obis import Quantity

# (canonical unit, power of ten applied to the raw value)
Scale = tuple[str | None, int]
Table = dict[Quantity, Scale]

KAIFA: Final[Table] = {
    Quantity.ACTIVE_POWER: ("W", 0),
    Quantity.REACTIVE_POWER: ("var", 0),
    Quantity.APPARENT_POWER: ("VA", 0),
    Quantity.CURRENT: ("A", -3),
    Quantity.VOLTAGE: ("V", -1),
    Quantity.ACTIVE_ENERGY: ("kWh", -3),
    Quantity.REACTIVE_ENERGY: ("kvarh", -3),
}

KAMSTRUP_NO: Final[Table] = {
    Quantity.ACTIVE_POWER: ("W", 0),
    Quantity.REACTIVE_POWER: ("var", 0),
    Quantity.APPARENT_POWER: ("VA", 0),
    Quantity.CURRENT: ("A", -2),
    Quantity.VOLTAGE: ("V", 0),
    Quantity.ACTIVE_ENERGY: ("kWh", -2),
    Quantity.REACTIVE_ENERGY: ("kvarh", -2),
}
KAMSTRUP_SE: Final[Table] = {
    **KAMSTRUP_NO,
    Quantity.ACTIVE_ENERGY: ("kWh", -3),
    Quantity.REACTIVE_ENERGY: ("kvarh", -3),
}

LG_E450: Final[Table] = {
    Quantity.ACTIVE_POWER: ("W", 0),
    Quantity.REACTIVE_POWER: ("var", 0),
    Quantity.APPARENT_POWER: ("VA", 0),
    Quantity.CURRENT: ("A", -2),
    Quantity.VOLTAGE: ("V", 0),
    Quantity.POWER_FACTOR: ("", -3),  # dimensionless: "" (None means unknown)
    Quantity.ACTIVE_ENERGY: ("kWh", -3),
    Quantity.REACTIVE_ENERGY: ("kvarh", -3),
    Quantity.APPARENT_ENERGY: ("kVAh", -3),
}
LG_E570: Final[Table] = {**LG_E450, Quantity.CURRENT: ("A", 0)}
LG_E360: Final[Table] = {**LG_E450, Quantity.VOLTAGE: ("V", -1)}
ISKRA_AM550: Final[Table] = {**LG_E450, Quantity.VOLTAGE: ("V", -1)}

# Families recognised from frame contents (see the module docstring).
KAIFA_FAMILY: Final = "kaifa"
KAMSTRUP_FAMILY: Final = "kamstrup"
SWISS_FAMILY: Final = "swiss"
ISKRA_FAMILY: Final = "iskra"


@dataclass(frozen=True, slots=True)
class Profile:
    """A named choice of tables per family; `tables_enabled=False` publishes unscaled raw values."""

    name: str
    tables: dict[str, Table] = field(default_factory=dict)
    tables_enabled: bool = True

    def table(self, family: str | None) -> Table | None:
        if family is None or not self.tables_enabled:
            return None
        return self.tables.get(family)


_DEFAULT_TABLES: Final[dict[str, Table]] = {
    KAIFA_FAMILY: KAIFA,
    KAMSTRUP_FAMILY: KAMSTRUP_NO,
    SWISS_FAMILY: LG_E450,
    ISKRA_FAMILY: ISKRA_AM550,
}

PROFILES: Final[dict[str, Profile]] = {
    "auto": Profile("auto", _DEFAULT_TABLES),
    "kamstrup-no": Profile("kamstrup-no", _DEFAULT_TABLES),
    "kamstrup-se": Profile("kamstrup-se", {**_DEFAULT_TABLES, KAMSTRUP_FAMILY: KAMSTRUP_SE}),
    "lg-e450": Profile("lg-e450", _DEFAULT_TABLES),
    "lg-e570": Profile("lg-e570", {**_DEFAULT_TABLES, SWISS_FAMILY: LG_E570}),
    "lg-e360": Profile("lg-e360", {**_DEFAULT_TABLES, SWISS_FAMILY: LG_E360}),
    "iskra-am550": Profile("iskra-am550", {**_DEFAULT_TABLES, SWISS_FAMILY: ISKRA_AM550}),
    "raw": Profile("raw", {}, tables_enabled=False),
}
PROFILE_NAMES: Final = tuple(PROFILES)


def get_profile(name: str) -> Profile:
    """The profile called `name` (case-insensitive); ValueError lists the valid names."""
    profile = PROFILES.get(name.strip().lower())
    if profile is None:
        raise ValueError(f"unknown meter profile {name!r}; choose one of: {', '.join(PROFILE_NAMES)}")
    return profile


# Manufacturer FLAG ids (DLMS UA / DIN 43863-5) seen in system titles, logical device names and ids.
MANUFACTURERS: Final[dict[str, str]] = {
    "KAM": "Kamstrup",
    "KFM": "Kaifa",
    "LGZ": "Landis+Gyr",
    "LGF": "Landis+Gyr",
    "SAG": "Sagemcom",
    "ISK": "Iskraemeco",
    "ADN": "Aidon",
    "AID": "Aidon",
    "ELS": "Elster",
    "EMH": "EMH",
    "ITF": "Itron",
    "ZPA": "ZPA",
}


def family_from_flag(flag: str) -> str | None:
    """Scaling family for a manufacturer FLAG id when a list carries no scalers (see module docs)."""
    if flag == "LGZ":
        return SWISS_FAMILY
    if flag == "ISK":
        return ISKRA_FAMILY
    if flag == "KAM":
        return KAMSTRUP_FAMILY
    return None


# Phase voltages of mains supplies lie far below this many volts; a raw voltage above it is in 0.1 V.
MAX_PLAUSIBLE_VOLTS: Final = 1000
# How much closer (in decades of S/P) one current scale must be than the other to be chosen.
_DECISIVE_DECADES: Final = 0.5


def infer_swiss_scales(
    table: Table, voltages: list[int], currents: list[int], active_power_w: int
) -> tuple[Table, bool]:
    """Pick current and voltage scaling for a Swiss push list without scalers, from physics.

    L+G E450, E570, E360 and Iskra AM550 lists carry no scalers, and models differ (E570 current in A,
    E450 in 0.01 A; E360/AM550 voltage in 0.1 V) while nothing in the frame names the model.
    Instead of guessing the model, use what any consistent set of readings must satisfy:

    - a phase voltage is below 1,000 V, so larger raw voltages are in 0.1 V;
    - the apparent power sum(V x I) is close to the active power |P| (power factor near 1; it is never
      off by the factor 100 between the candidate current scales 0.01 A and 1 A): take the candidate
      whose ratio S/P is nearest to 1 in decades, when it is clearly nearer.

    Returns the (possibly adjusted) table and whether the frame held enough evidence to decide (no
    evidence: all currents or the power are zero).
    """
    adjusted = dict(table)
    volt_unit, volt_exp = table.get(Quantity.VOLTAGE, ("V", 0))
    if voltages and max(voltages) * 10.0**volt_exp > MAX_PLAUSIBLE_VOLTS:
        volt_exp -= 1
        adjusted[Quantity.VOLTAGE] = (volt_unit, volt_exp)
    volts = [v * 10.0**volt_exp for v in voltages]
    if not currents or not any(currents) or active_power_w == 0 or not any(volts):
        return adjusted, False
    amp_unit, _ = table.get(Quantity.CURRENT, ("A", -2))
    # Distance of the implied apparent/active power ratio from 1, in decades, for each candidate.
    scores = []
    for exponent in (-2, 0):
        apparent = sum(v * i * 10.0**exponent for v, i in zip(volts, currents, strict=False))
        if apparent <= 0:
            return adjusted, False
        scores.append((abs(math.log10(apparent / abs(active_power_w))), exponent))
    scores.sort()
    if scores[1][0] - scores[0][0] < _DECISIVE_DECADES:
        return adjusted, False  # too close to call (a very poor power factor): keep the default
    adjusted[Quantity.CURRENT] = (amp_unit, scores[0][1])
    return adjusted, True
