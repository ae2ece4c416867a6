"""Clay v0 band facts: order, band groups, normalisation constants.

This is the single source of truth for everything that depends on which band is which. It is kept
free of torch so that the torch-free runtime can import it too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: The 13 bands of a Clay v0 chip, in the model's input order. Note SAR: VH before VV.
BAND_NAMES: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "VH", "VV", "DEM",
)  # fmt: skip

#: Per-band mean and standard deviation of the release's training data, raw physical units.
BAND_MEANS: tuple[float, ...] = (
    1369.03, 1597.68, 1741.10, 2053.58, 2569.82, 2763.01, 2858.43, 2893.86, 2303.00, 1807.79,
    0.026, 0.118, 499.46,
)  # fmt: skip
BAND_STDS: tuple[float, ...] = (
    2026.96, 2011.88, 2146.35, 2138.96, 2003.27, 1962.45, 2016.38, 1917.12, 1679.88, 1568.06,
    0.118, 0.873, 880.35,
)  # fmt: skip

#: Band groups in token order, each with the indices (into BAND_NAMES) its patch embedding takes.
#: rgb takes B04, B03, B02 in that order, and rededge takes B8A (7), not B08.
BAND_GROUPS: dict[str, tuple[int, ...]] = {
    "rgb": (2, 1, 0),
    "rededge": (3, 4, 5, 7),
    "nir": (6,),
    "swir": (8, 9),
    "sar": (10, 11),
    "dem": (12,),
}
GROUP_NAMES: tuple[str, ...] = tuple(BAND_GROUPS)
S2_BANDS: tuple[str, ...] = BAND_NAMES[:10]
SAR_BANDS: tuple[str, ...] = ("VH", "VV")

#: The units the engine's ``pixels`` input expects, per kind of band: what Clay v0's normalisation
#: constants (BAND_MEANS/BAND_STDS) were computed on, and what :mod:`clay.runtime.scenes.units` brings
#: every scene to. Sentinel-2: harmonised DNs, i.e. without the +1000 offset that L2A processing
#: baseline 04.00+ adds (from 2022-01-25): most of Clay v0's 2017–2023 training scenes predate it,
#: so its normalisation means above (B02 1369) are mostly offset-free statistics.
INPUT_UNITS: dict[str, str] = {
    "S2": "L2A surface reflectance x 10000, harmonised (no +1000 offset of processing baseline 04.00+)",
    "SAR": "backscatter as linear power (gamma0), not dB",
    "DEM": "elevation in metres",
}

CHIP_SIZE = 512
PATCH_SIZE = 32
GRID_SIZE = CHIP_SIZE // PATCH_SIZE  # 16 patches per side, 256 tokens per group


def parse_groups(groups: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise a group selection (``"rgb,swir"`` or a list) into spec order; ``None`` means all.

    Spec order matters: the exported ``pixels`` input and the token sequence follow it whatever
    order the user typed.
    """
    if groups is None:
        return GROUP_NAMES
    names = [g.strip().lower() for g in (groups.split(",") if isinstance(groups, str) else groups)]
    names = [g for g in names if g]
    unknown = [g for g in names if g not in BAND_GROUPS]
    if unknown:
        raise ValueError(f"unknown band group(s) {', '.join(unknown)}; known: {', '.join(GROUP_NAMES)}")
    if not names:
        raise ValueError(f"no band group selected; known: {', '.join(GROUP_NAMES)}")
    return tuple(g for g in GROUP_NAMES if g in names)


def bands_of_groups(groups: Sequence[str]) -> tuple[int, ...]:
    """Indices (into BAND_NAMES, ascending) of the bands the given groups need."""
    return tuple(sorted(i for g in groups for i in BAND_GROUPS[g]))


def complete_groups(band_names, groups: Sequence[str] = GROUP_NAMES) -> tuple[str, ...]:
    """The groups (of ``groups``, in spec order) whose every band is among ``band_names``."""
    present = set(band_names)
    return tuple(g for g in GROUP_NAMES if g in groups and all(BAND_NAMES[i] in present for i in BAND_GROUPS[g]))


def canonical_band_name(name: str) -> str | None:
    """Map a band label as users write it (``B2``, ``b02``, ``vv``, ``B8A``, ``elevation``) to ours.

    Returns ``None`` for labels that are not one of the 13 bands (``B01``, ``SCL``...).
    """
    label = name.strip().upper()
    label = re.sub(r"\.(TIF|TIFF|JP2|VRT)$", "", label)
    match = re.fullmatch(r"B0?(\d{1,2}|8A)", label)
    if match:
        number = match.group(1)
        label = "B8A" if number == "8A" else f"B{int(number):02d}"
    elif label in ("ELEVATION", "DSM", "HEIGHT"):
        label = "DEM"
    return label if label in BAND_NAMES else None


def latlon_features(lon_deg: float, lat_deg: float) -> tuple[float, float]:
    """The two lat/lon inputs of Clay v0: ``(sin(lat), atan2(cos(lon), sin(lon)))``, lat first.

    Reference implementation for tests and documentation; the model computes the same in torch.
    """
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return math.sin(lat), math.atan2(math.cos(lon), math.sin(lon))


#: The years Clay v0's training scenes were sensed in (../shared/clay-v0-spec.md: "1203 MGRS tiles
#: × 3 dates (2017–2023)").
TRAINING_YEARS = (2017, 2023)
#: Clay v0's date encoding (:func:`date_features`) is periodic: a year repeats every 18 years from
#: 2012, December is encoded as January (period 11 over 12 months) and day 31 as day 1 (period 30).
YEAR_PERIOD = 18

#: One fixed sentence per kind of date the model cannot tell apart, so that a run says each once.
DATE_ALIASES = {
    "year": (f"dates outside Clay v0's training years {TRAINING_YEARS[0]}–{TRAINING_YEARS[1]}: its year encoding "
             f"repeats every {YEAR_PERIOD} years (1994 = 2012 = 2030), so the model takes such a year for another "
             "or for one it never saw"),
    "month": "December dates: Clay v0's month encoding gives December the value of January",
    "day": "dates on the 31st: Clay v0's day encoding gives the 31st the value of the 1st",
}  # fmt: skip


def date_aliases(year: int, month: int, day: int) -> dict[str, str]:
    """What Clay v0's date encoding makes of this date where it cannot tell it from another: kind
    (``year``, ``month``, ``day``, keys of :data:`DATE_ALIASES`) → what it is encoded as."""
    found = {}
    if not TRAINING_YEARS[0] <= year <= TRAINING_YEARS[1]:
        twins = [y for y in (year - YEAR_PERIOD, year + YEAR_PERIOD) if TRAINING_YEARS[0] <= y <= TRAINING_YEARS[1]]
        found["year"] = (f"{year} encodes as {twins[0]}" if twins else
                         f"{year} is outside the training years and encodes as no year the model saw")  # fmt: skip
    if month == 12:
        found["month"] = "December encodes as January"
    if day == 31:
        found["day"] = "day 31 encodes as day 1"
    return found


def date_features(year: int, month: int, day: int) -> tuple[float, float, float]:
    """The three time inputs of Clay v0, each ``atan2(cos(r), sin(r))`` of a cyclic angle."""
    angles = (
        2 * math.pi * (year - 2012) / 18,
        2 * math.pi * (month - 1) / 11,
        2 * math.pi * (day - 1) / 30,
    )
    return tuple(math.atan2(math.cos(r), math.sin(r)) for r in angles)  # type: ignore[return-value]
