"""Each band brought to the units Clay v0's weights expect, per scene, from that scene's own metadata.

The engine's input units (:data:`clay.runtime.bands.INPUT_UNITS`, recorded in every artifact):
Sentinel-2 L2A surface reflectance × 10 000 without the +1000 offset of processing baseline 04.00+
("harmonised"), Sentinel-1 backscatter as linear power, elevation in metres. What a file holds is
read from, in this order: the run's explicit options (``--s2-offset``, ``--sar-units``: overrides),
GDAL's per-band scale and offset, the product's own offset metadata, band units. A STAC Item's
declarations (``raster:bands``, ``earthsearch:boa_offset_applied``, ``s2:processing_baseline``) reach
here in the file's header (:func:`clay.runtime.scenes.stac.asset_header`), which names their source for the
notes. A declared +1000 offset (−0.1) on a product whose processing baseline predates it (below
04.00) contradicts that baseline and is not applied, with a warning; where a declared offset is
removed, B02 is checked on every chip (:func:`check_values`): DNs that carry the offset are not
mostly below it (blue reflectance is not negative), so a band that is has none, whatever its
metadata says (an archive that removed it without saying so). Where nothing is
declared, the values themselves are checked as each chip is read (:func:`check_values`, on pixels
the reader decodes anyway, nodata and masked pixels left out): a "linear" SAR band that is mostly
negative is in dB, a float Sentinel-2 band below 2 holds reflectance, not DNs; the scene is then
refused in one line that says what was expected. Opening a scene therefore reads no pixel.

A conversion is linear on the stored value, then for dB a power of ten:
``clay = raw · gain + bias`` (``10^(clay / 10)`` when ``from_db``). :func:`band_conversion` returns it
with a note of what was done and why, which goes into the output's ``clay:preprocessing``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date as Date

import numpy as np

from ..bands import S2_BANDS, SAR_BANDS
from ..errors import SceneError
from ..sensors import INPUT_RULES
from .headers import Header

#: Sentinel-2 L2A digital numbers are reflectance × this (the product's QUANTIFICATION_VALUE).
S2_QUANTIFICATION = 10_000.0
#: The offset processing baseline 04.00+ adds to L2A DNs (BOA_ADD_OFFSET = −1000), from 2022-01-25.
S2_BOA_OFFSET = 1000.0
S2_OFFSET_FROM = Date(2022, 1, 25)
#: File tags that say an archive already removed the offset from the values, whatever scale and
#: offset it still declares: the file-level form of Earth Search's ``earthsearch:boa_offset_applied``
#: (GDAL reads ``:`` in a metadata key as a separator, so a file cannot carry that name as it is).
S2_HARMONISED_TAGS = ("BOA_OFFSET_APPLIED", "boa_offset_applied")
#: A float S2 band whose values (99 % of a chip's) stay below this holds reflectance (0–1), not DNs.
REFLECTANCE_CEILING = 2.0
#: Band units that declare reflectance (0–1) or dB, and the factor of each length unit to metres.
REFLECTANCE_UNITS = ("reflectance", "surface reflectance", "sr", "bottom of atmosphere reflectance")
DB_UNITS = ("db", "decibel", "decibels")
LINEAR_UNITS = ("linear", "power", "linear power", "intensity", "1", "amplitude^2")
METRES = {"": 1.0, "m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0, "km": 1000.0,
          "dm": 0.1, "cm": 0.01, "mm": 0.001, "ft": 0.3048, "foot": 0.3048, "feet": 0.3048,
          "us-ft": 1200 / 3937, "us survey foot": 1200 / 3937}  # fmt: skip
#: Linear SAR backscatter power above which a chip's median cannot be backscatter: 100 is +20 dB,
#: while natural surfaces' gamma0 lies around -25 to 0 dB (0.003-1) and only man-made corner
#: reflectors reach +20 dB, on a few pixels, never on half a chip. Optical DNs (1000s) read as SAR
#: (an unnamed 13-band L1C stack taken in Clay's order) exceed it.
SAR_POWER_CEILING = 100.0
#: Elevations above the highest summit (Everest, 8849 m) on half a chip: not a DEM in metres.
ELEVATION_CEILING_M = 8900.0
#: The processing baseline in a Sentinel-2 product name (``S2B_MSIL2A_20220301T033539_N0400_R061_…``).
PRODUCT_BASELINE = re.compile(r"S2[A-D]_MSIL2A_\d{8}T\d{6}_N(\d{4})_")


@dataclass(frozen=True)
class Conversion:
    """How a band's stored values become Clay units: ``raw · gain + bias``, then dB → linear power."""

    gain: float = 1.0
    bias: float = 0.0
    from_db: bool = False

    @property
    def identity(self) -> bool:
        return self.gain == 1.0 and self.bias == 0.0 and not self.from_db


@dataclass(frozen=True)
class Converted:
    """A band's conversion, the note recorded in the output metadata, a warning for the user, and
    what :func:`check_values` must confirm on its values (``"linear"``: SAR taken as linear power
    with nothing declared; ``"power"``: SAR whose units were declared, in backscatter's range;
    ``"dn"``: a float S2 band taken as DNs; ``"offset"``: B02 taken as carrying the +1000 offset;
    ``"elevation"``: a DEM in metres)."""

    conversion: Conversion
    note: str
    warning: str | None = None
    check: str | None = None


def band_conversion(header: Header, index: int, band: str, sar_units: str, s2_offset: float | None,
                    day: Date | None) -> Converted:  # fmt: skip
    """How to bring band ``index`` (1-based) of ``header`` to Clay units (see the module docstring).

    ``sar_units``: ``auto``, ``db`` or ``linear`` (the run's option); ``s2_offset``: the run's
    ``--s2-offset`` (``None``: from each scene's metadata); ``day``: the scene's date, to warn about an
    S2 scene from the offset era that declares nothing. Raises :class:`SceneError` for a band whose
    units cannot be told or are not what Clay expects."""
    if band in S2_BANDS:
        return _s2(header, index, band, s2_offset, day)
    if band in SAR_BANDS:
        return _sar(header, index, band, sar_units)
    return _dem(header, index, band)


def _declared(header: Header, index: int) -> tuple[float, float]:
    return float(header.scales[index - 1]), float(header.offsets[index - 1])


def _by(header: Header, kind: str, default: str) -> str:
    """Who declared a header's value of this kind: a catalogue (a STAC Item), else ``default``."""
    return header.declared.get(kind, default)


def _unit_note(header: Header, unit: str) -> str:
    return f"unit {unit!r}" + (f" ({header.declared['unit']})" if "unit" in header.declared else "")


def _tag(header: Header, index: int, *keys: str) -> str | None:
    band_tags = header.band_tags[index - 1] if header.band_tags else {}
    for key in keys:
        for tags in (band_tags, header.tags.get("", {})):
            if key in tags:
                return tags[key]
    return None


def _s2(header: Header, index: int, band: str, s2_offset: float | None, day: Date | None) -> Converted:
    scale, offset = _declared(header, index)
    by = _by(header, "scale", "GDAL")
    if s2_offset is not None:
        note = f"--s2-offset {s2_offset:g}: DN - {s2_offset:g}" if s2_offset else "--s2-offset 0: DNs taken as harmonised"
        if scale != 1.0:
            return Converted(Conversion(scale * S2_QUANTIFICATION, -s2_offset), f"{by} scale {scale:g}; {note}")
        return Converted(Conversion(1.0, -s2_offset), note)
    harmonised = _tag(header, index, *S2_HARMONISED_TAGS)
    if harmonised is not None and harmonised.strip().lower() in ("true", "1", "yes"):
        why = _by(header, "harmonised", "boa_offset_applied tag")
        again = f"{by} offset {offset:g} not applied again" if offset else "declared offset not applied again"
        return Converted(Conversion(scale * S2_QUANTIFICATION if scale != 1.0 else 1.0, 0.0),
                         f"offset already removed ({why}); {again}")  # fmt: skip
    if scale != 1.0 or offset != 0.0:
        gain, bias = scale * S2_QUANTIFICATION, offset * S2_QUANTIFICATION
        if scale == 1.0:  # an offset on DNs: BOA_ADD_OFFSET-style
            gain, bias = 1.0, offset
        baseline = _baseline(header)
        if baseline is not None and baseline < 4.0 and math.isclose(bias, -S2_BOA_OFFSET):
            source = _by(header, "baseline", "tag or product name")
            return Converted(
                Conversion(gain, 0.0),
                f"{by} scale {scale:g} offset {offset:g}; offset not applied: processing baseline {baseline:05.2f} "
                f"({source}) predates it: DN * {gain:g}",
                f"{header.path}: {by} declares the +1000 offset of processing baseline 04.00+ (offset {offset:g}), but "
                f"the processing baseline is {baseline:05.2f} ({source}), whose DNs carry none: not applied; pass "
                "--s2-offset 1000 if they do",
            )  # fmt: skip
        return Converted(Conversion(gain, bias), f"{by} scale {scale:g} offset {offset:g}: DN * {gain:g} {bias:+g}",
                         check=_offset_check(band, bias))  # fmt: skip
    boa = _tag(header, index, f"BOA_ADD_OFFSET_{band}", f"BOA_ADD_OFFSET_B{band[1:].lstrip('0')}", "BOA_ADD_OFFSET")
    if boa is not None:
        try:
            value = float(boa)
        except ValueError:
            raise SceneError(f"{header.path}: {band}: BOA_ADD_OFFSET {boa!r} is not a number") from None
        return Converted(Conversion(1.0, value), f"BOA_ADD_OFFSET {value:g}: DN {value:+g}", check=_offset_check(band, value))
    baseline = _baseline(header)
    if baseline is not None:
        value = -S2_BOA_OFFSET if baseline >= 4.0 else 0.0
        source = f" ({header.declared['baseline']})" if "baseline" in header.declared else ""
        return Converted(Conversion(1.0, value), f"processing baseline {baseline:05.2f}{source}: DN {value:+g}",
                         check=_offset_check(band, value))  # fmt: skip
    unit = header.units[index - 1].strip().lower()
    if unit in REFLECTANCE_UNITS:
        return Converted(Conversion(S2_QUANTIFICATION, 0.0),
                         f"{_unit_note(header, unit)}: reflectance * {S2_QUANTIFICATION:g}")  # fmt: skip
    check = "dn" if np.dtype(header.dtypes[index - 1]).kind == "f" else None
    warning = None
    if day is not None and day >= S2_OFFSET_FROM:
        # one text for every band, so that a scene says it once (open_scene drops repeated warnings)
        warning = (f"{header.path}: sensed {day}, when L2A products carry a +1000 offset (baseline 04.00+), but no "
                   "scale/offset, BOA_ADD_OFFSET or baseline is declared for its Sentinel-2 bands: DNs taken as "
                   "harmonised; pass --s2-offset 1000 if they carry it")  # fmt: skip
    return Converted(Conversion(), "no offset declared: DNs taken as harmonised", warning, check)


def _offset_check(band: str, bias: float) -> str | None:
    """``"offset"`` for B02 when the +1000 offset its metadata declares is removed: confirmed on every
    chip (blue reflectance is not negative over any natural surface, so the darkest DNs that carry the
    offset are not mostly below it; over dark water the NIR and SWIR bands can be, so only B02)."""
    return "offset" if band == "B02" and math.isclose(bias, -S2_BOA_OFFSET) else None


def _baseline(header: Header) -> float | None:
    """The S2 processing baseline from a tag, else a product name (``_N0400_``); ``N9999``
    (reprocessed, unknown) gives ``None``."""
    text = _tag(header, 1, "PROCESSING_BASELINE", "s2:processing_baseline")
    if text is None:
        match = PRODUCT_BASELINE.search(str(header.path))
        text = f"{match.group(1)[:2]}.{match.group(1)[2:]}" if match else None
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return None if value is None or value >= 99 else value


def _sar(header: Header, index: int, band: str, sar_units: str) -> Converted:
    scale, offset = _declared(header, index)
    by = _by(header, "scale", "GDAL")
    declared = "" if (scale, offset) == (1.0, 0.0) else f"{by} scale {scale:g} offset {offset:g}; "
    if sar_units == "db":
        return Converted(Conversion(scale, offset, True), f"{declared}--sar-units db: dB to linear power", check="power")
    unit = header.units[index - 1].strip().lower()
    if sar_units == "auto" and unit in DB_UNITS:
        return Converted(Conversion(scale, offset, True), f"{declared}{_unit_note(header, unit)}: dB to linear power",
                         check="power")  # fmt: skip
    if sar_units == "auto" and unit in LINEAR_UNITS:
        return Converted(Conversion(scale, offset), f"{declared}{_unit_note(header, unit)}: linear power", check="power")
    why = "--sar-units linear" if sar_units == "linear" else "no unit declared: linear power, checked on every chip"
    return Converted(Conversion(scale, offset), f"{declared}{why}", check="linear")


def _dem(header: Header, index: int, band: str) -> Converted:
    scale, offset = _declared(header, index)
    unit = header.units[index - 1].strip().lower()
    if unit not in METRES:
        raise SceneError(f"{header.path}: {band} unit {unit!r} is not a length unit this runtime converts to metres "
                         f"({', '.join(u for u in METRES if u)})")  # fmt: skip
    factor = METRES[unit]
    notes = [f"{_by(header, 'scale', 'GDAL')} scale {scale:g} offset {offset:g}"] if (scale, offset) != (1.0, 0.0) else []
    if factor != 1.0:
        notes.append(f"{_unit_note(header, unit)}: * {factor:g} to metres")
    return Converted(Conversion(scale * factor, offset * factor), "; ".join(notes) or "metres", check="elevation")


def check_values(path, band: str, check: str, values: np.ndarray, valid: np.ndarray | None) -> None:
    """Confirm on a chip's stored values (``valid``: where they are not nodata; ``None``: all) what
    :func:`band_conversion` assumed when nothing was declared, or raise :class:`SceneError`:
    linear power is never negative (a mostly negative band is in dB), Sentinel-2 DNs are not all
    below 2 (such a band holds reflectance), and B02 with its declared +1000 offset removed is not
    mostly negative (its DNs never carried it). ``values`` are converted (the offset removed).
    Chips without a valid pixel say nothing."""
    sample = values if valid is None else values[valid]
    if sample.size == 0:
        return
    if check in ("linear", "power") and np.count_nonzero(sample > SAR_POWER_CEILING) > 0.5 * sample.size:
        raise SceneError(
            f"{path}: SAR band {band} holds values that are not backscatter: its median is above linear power "
            f"{SAR_POWER_CEILING:g} (+20 dB), where land and sea lie below 1 (0 dB); an optical band taken as {band}? "
            "A stack without band descriptions is read in Clay's order (B02…B12, VH, VV, DEM): name its bands "
            "(gdal_edit.py or rasterio's descriptions) or give per-band files"
        )
    if check == "elevation" and np.count_nonzero(sample > ELEVATION_CEILING_M) > 0.5 * sample.size:
        raise SceneError(
            f"{path}: {band} is mostly above {ELEVATION_CEILING_M:g} m, higher than any summit: not an elevation in "
            "metres (another band taken as the DEM, or a unit the file does not declare)"
        )
    if check == "linear" and np.count_nonzero(sample < 0) > 0.5 * sample.size:
        raise SceneError(
            f"{path}: SAR band {band} is mostly negative, so it is in dB, not linear power; "
            "pass --sar-units db (RunOptions(sar_units='db') in Python)"
        )
    if check == "offset" and np.count_nonzero(sample < 0) > 0.5 * sample.size:
        raise SceneError(
            f"{path}: {band} is mostly below the +1000 offset its metadata declares (processing baseline 04.00+), "
            "i.e. negative reflectance once it is removed: its DNs do not carry the offset (an archive that removed "
            "it without saying so); pass --s2-offset 0 (RunOptions(s2_offset=0) in Python)"
        )
    if check == "dn" and np.count_nonzero(sample >= REFLECTANCE_CEILING) < 0.01 * sample.size:
        raise SceneError(
            f"{path}: {band} holds values below {REFLECTANCE_CEILING:g}: reflectance, not the L2A digital numbers "
            f"(reflectance × {S2_QUANTIFICATION:g}) Clay v0 expects; set the band's unit to 'reflectance' "
            f"(gdal_edit.py -units reflectance) or multiply it by {S2_QUANTIFICATION:g}"
        )


def stored_conversion(header: Header, index: int, band: str, sensor: str, product: tuple[float, float] | None = None) -> Converted:
    """How band ``index`` of a file of a Clay v1.5 sensor whose means are of the product's *stored*
    values (Landsat C2 DNs, NAIP 8-bit values, MODIS DNs: :data:`clay.runtime.sensors.INPUT_RULES`)
    becomes those values.

    The declared GDAL/STAC scale and offset say what a stored value is (reflectance = raw · s + o):
    the product's own (or none declared: the stored values are the product's, as the training read
    them) → kept as they are; another (a file rescaled to reflectance, an HLS L30 granule: ``product``
    gives what a product known by name stores when the file declares nothing) → brought back to the
    product's: DN = (raw · s + o − O) / S. A sensor whose stored values are not reflectance (NAIP)
    cannot be brought back from other units: refused in one line."""
    rule = INPUT_RULES[sensor]
    scale, offset = _declared(header, index)
    by = _by(header, "scale", "GDAL")
    if (scale, offset) == (1.0, 0.0) and product is not None:
        scale, offset = product
        by = "its product's documented"
    if (scale, offset) == (1.0, 0.0):
        return Converted(Conversion(), f"stored values taken as {sensor}'s: {rule.units}")
    if rule.scale is None:
        raise SceneError(f"{header.path}: {band}: {by} scale {scale:g} offset {offset:g}; Clay v1.5 takes {sensor}'s "
                         f"stored values ({rule.units}), which cannot be recovered from rescaled ones")  # fmt: skip
    if math.isclose(scale, rule.scale, rel_tol=1e-6) and math.isclose(offset, rule.offset, abs_tol=1e-9):
        return Converted(Conversion(), f"{by} scale {scale:g} offset {offset:g} is {sensor}'s own: stored values "
                                       f"kept ({rule.units})")  # fmt: skip
    gain, bias = scale / rule.scale, (offset - rule.offset) / rule.scale
    return Converted(Conversion(gain, bias), f"{by} scale {scale:g} offset {offset:g}: brought to {sensor}'s stored "
                                             f"values, raw * {gain:g} {bias:+g} ({rule.units})")  # fmt: skip
