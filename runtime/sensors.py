"""Clay v1.5's sensor table and input conventions: which bands a sensor has, their wavelengths, the
normalisation constants and the ground sampling distance the weights were trained with.

Source of every constant: ``configs/metadata.yaml`` of Clay-foundation/model (Apache-2.0), the table
that v1.5's training (``claymodel/module.py`` reads it into ``ClayMAE.metadata``; ``model.py`` takes
``waves`` and ``gsd`` per platform from it, ``datamodule.py`` the means and stds) used. Torch-free:
the runtime reads it too (which bands a scene must hold, issue 37).

Band names: where a sensor's band is one of this runtime's Sentinel-2 bands (``clay.runtime.bands``),
it keeps that name (``B02`` for S2 ``blue``) so that the scene reader finds it as for Clay v0; the
other sensors keep Clay's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date as Date


@dataclass(frozen=True)
class Sensor:
    """One row of Clay v1.5's ``metadata.yaml``, bands in the model's input order.

    ``wavelengths`` in µm (each band's central wavelength: what the dynamic patch embedding turns
    into that band's weights); ``means``/``stds`` in the sensor's raw units (Sentinel-1: dB, see
    :data:`SAR_DB`); ``gsd`` in metres.
    """

    name: str
    bands: tuple[str, ...]  # this runtime's band names (see the module docstring)
    clay_bands: tuple[str, ...]  # the names metadata.yaml uses
    wavelengths: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    gsd: float

    @property
    def full(self) -> bool:
        """Whether this is the sensor's whole band list (not a subset, see :meth:`subset`)."""
        return self.bands == SENSORS[self.name].bands

    @property
    def key(self) -> str:
        """The artifact folder's name: the sensor's (``sentinel-2-l2a``), or for a band subset the
        sensor's and its bands (``sentinel-2-l2a+B02+B03+B04+B08``), as ``clay-export --sensor`` takes it."""
        return self.name if self.full else "+".join((self.name, *self.bands))

    def subset(self, bands) -> Sensor:
        """The same sensor with only ``bands`` (in the sensor's order, whatever order they are given):
        their wavelengths, means and stds. Clay v1.5 takes any subset: its wavelength transformer makes
        the patch-embedding weights from the wavelengths present (``claymodel/factory.py``
        ``WavesTransformer``: the wavelength tokens attend to one another, so a band's weights and the
        bias depend on which other bands are there). :class:`SensorError` for a band it does not have."""
        wanted = set(bands)
        unknown = [b for b in bands if b not in self.bands]
        if unknown or not wanted:
            raise SensorError(f"{self.name} has no band(s) {', '.join(unknown) or '(none named)'}; its bands: {', '.join(self.bands)}")
        keep = [i for i, b in enumerate(self.bands) if b in wanted]
        pick = lambda values: tuple(values[i] for i in keep)
        return Sensor(self.name, pick(self.bands), pick(self.clay_bands), pick(self.wavelengths), pick(self.means),
                      pick(self.stds), self.gsd)  # fmt: skip


def _sensor(name: str, gsd: float, rows: tuple[tuple[str, str, float, float, float], ...]) -> Sensor:
    bands, clay, waves, means, stds = zip(*rows)
    return Sensor(name, bands, clay, waves, means, stds, gsd)


# (our name, metadata.yaml name, wavelength µm, mean, std), copied from metadata.yaml in its band_order.
SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (
        _sensor("sentinel-2-l2a", 10.0, (
            ("B02", "blue", 0.493, 1105.0, 1809.0), ("B03", "green", 0.56, 1355.0, 1757.0),
            ("B04", "red", 0.665, 1552.0, 1888.0), ("B05", "rededge1", 0.704, 1887.0, 1870.0),
            ("B06", "rededge2", 0.74, 2422.0, 1732.0), ("B07", "rededge3", 0.783, 2630.0, 1697.0),
            ("B08", "nir", 0.842, 2743.0, 1742.0), ("B8A", "nir08", 0.865, 2785.0, 1648.0),
            ("B11", "swir16", 1.61, 2388.0, 1470.0), ("B12", "swir22", 2.19, 1835.0, 1379.0),
        )),
        _sensor("planetscope-sr", 5.0, (
            ("coastal_blue", "coastal_blue", 0.443, 1720.0, 747.0), ("blue", "blue", 0.490, 1715.0, 698.0),
            ("green_i", "green_i", 0.531, 1913.0, 739.0), ("green", "green", 0.565, 2088.0, 768.0),
            ("yellow", "yellow", 0.610, 2274.0, 849.0), ("red", "red", 0.665, 2290.0, 868.0),
            ("rededge", "rededge", 0.705, 2613.0, 849.0), ("nir", "nir", 0.865, 3970.0, 914.0),
        )),
        _sensor("landsat-c2l1", 30.0, (
            ("red", "red", 0.65, 10678.0, 6025.0), ("green", "green", 0.56, 10563.0, 5411.0),
            ("blue", "blue", 0.48, 11083.0, 5468.0), ("nir08", "nir08", 0.86, 14792.0, 6746.0),
            ("swir16", "swir16", 1.6, 12276.0, 5897.0), ("swir22", "swir22", 2.2, 10114.0, 4850.0),
        )),
        _sensor("landsat-c2l2-sr", 30.0, (
            ("red", "red", 0.65, 13705.0, 9578.0), ("green", "green", 0.56, 13310.0, 9408.0),
            ("blue", "blue", 0.48, 12474.0, 10144.0), ("nir08", "nir08", 0.86, 17801.0, 8277.0),
            ("swir16", "swir16", 1.6, 14615.0, 5300.0), ("swir22", "swir22", 2.2, 12701.0, 4522.0),
        )),
        _sensor("naip", 1.0, (
            ("red", "red", 0.65, 110.16, 47.23), ("green", "green", 0.56, 115.41, 39.82),
            ("blue", "blue", 0.48, 98.15, 35.43), ("nir", "nir", 0.842, 139.04, 49.86),
        )),
        _sensor("linz", 0.5, (
            ("red", "red", 0.635, 89.96, 41.83), ("green", "green", 0.555, 99.46, 36.96),
            ("blue", "blue", 0.465, 89.51, 31.45),
        )),
        _sensor("sentinel-1-rtc", 10.0, (
            ("VV", "vv", 3.5, -12.113, 8.314), ("VH", "vh", 4.0, -18.673, 8.017),
        )),
        _sensor("modis", 500.0, (
            ("sur_refl_b01", "sur_refl_b01", 0.645, 1072.0, 1643.0), ("sur_refl_b02", "sur_refl_b02", 0.858, 1624.0, 1878.0),
            ("sur_refl_b03", "sur_refl_b03", 0.469, 931.0, 1449.0), ("sur_refl_b04", "sur_refl_b04", 0.555, 1023.0, 1538.0),
            ("sur_refl_b05", "sur_refl_b05", 1.240, 1599.0, 1763.0), ("sur_refl_b06", "sur_refl_b06", 1.640, 1404.0, 1618.0),
            ("sur_refl_b07", "sur_refl_b07", 2.130, 1051.0, 1396.0),
        )),
        _sensor("satellogic-MSI-L1D", 1.0, (
            ("red", "red", 0.640, 1451.54, 995.48), ("green", "green", 0.545, 1456.54, 771.29),
            ("blue", "blue", 0.480, 1543.22, 708.86), ("nir", "nir", 0.825, 2132.68, 1236.71),
        )),
    )
}  # fmt: skip

#: Sensors whose pixels enter the model in dB: ``claymodel/datamodule.py`` (EODataset.__getitem__)
#: replaces values ≤ 0 by 1e-10 and takes 10·log10 of Sentinel-1 RTC's linear power; metadata.yaml's
#: S1 means (−12.1, −18.7) are dB. The exported graph does the same, so its input stays linear power.
SAR_DB: frozenset[str] = frozenset({"sentinel-1-rtc"})
SAR_FLOOR = 1e-10  # datamodule.py's replacement for non-positive linear power

#: How the model's time and location inputs are made (see :func:`metadata_values`).
CONVENTIONS = ("training", "tutorials")
CONVENTION_HELP = {
    "training": "as the v1.5 weights were trained (stacchip prechip.py + claymodel datamodule.py): location values "
                "longitude first [sin lon, cos lon, sin lat, cos lat], hour = noon, gsd = the sensor's metadata.yaml value",
    "tutorials": "as Clay's notebooks (docs/tutorials/wall-to-wall.ipynb) make them: latitude first "
                 "[sin lat, cos lat, sin lon, cos lon]; hour and gsd as for 'training' (the engine takes no time of day "
                 "and folds the sensor's gsd)",
}  # fmt: skip

NOON = 12  # prechip.py get_chip: every chip's datetime is rebuilt at 12:00 (see metadata_values)


class SensorError(ValueError):
    """A sensor name that Clay v1.5's table does not have."""


def sensor_named(name: str) -> Sensor:
    """The sensor called ``name`` (metadata.yaml's spelling); :class:`SensorError` names the known ones."""
    try:
        return SENSORS[name]
    except KeyError:
        raise SensorError(f"unknown sensor {name!r}; Clay v1.5 knows: {', '.join(SENSORS)}") from None


def sensor_spec(spec: str) -> Sensor:
    """``"naip"`` → the sensor; ``"sentinel-2-l2a+B02+B03+B04+B08"`` (or with ``:`` after the name) →
    that band subset of it (:meth:`Sensor.subset`); :class:`SensorError` in one line otherwise."""
    name, *bands = [part.strip() for part in spec.replace(":", "+").split("+")]
    sensor = sensor_named(name)
    return sensor.subset([b for b in bands if b]) if bands else sensor


def parse_sensors(text: str) -> tuple[str, ...]:
    """``"sentinel-2-l2a,landsat-c2l2-sr,sentinel-2-l2a+B02+B03+B04+B08"`` → each artifact set's key
    (:attr:`Sensor.key`), in the order given, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SensorError(f"no sensor named; Clay v1.5 knows: {', '.join(SENSORS)}")
    return tuple(dict.fromkeys(sensor_spec(name).key for name in names))


def metadata_values(lon: float, lat: float, day: Date, convention: str = "training") -> tuple[float, ...]:
    """The 8 values Clay v1.5 adds to the last 8 channels of every patch token, reference version.

    ``[sin week, cos week, sin hour, cos hour]`` then four location values. Week: ISO week number ·
    2π/52, hour: 12 · 2π/24 (stacchip ``prechip.py``, ``normalize_timestamp``; ``get_chip`` rebuilds
    every date at noon: its ``isinstance(date, datetime.date)`` holds for datetimes too). Location:
    ``normalize_latlon`` returns ``(sin lat, cos lat), (sin lon, cos lon)`` but ``get_chip`` unpacks it
    as ``lon_norm, lat_norm``, and ``datamodule.py`` stacks ``lat_norm, lon_norm``: the trained order
    is ``[sin lon, cos lon, sin lat, cos lat]``. The tutorials stack the true lat first.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    week = day.isocalendar()[1] * 2 * math.pi / 52
    hour = NOON * 2 * math.pi / 24
    lat_r, lon_r = lat * math.pi / 180, lon * math.pi / 180
    lat_pair = (math.sin(lat_r), math.cos(lat_r))
    lon_pair = (math.sin(lon_r), math.cos(lon_r))
    location = lon_pair + lat_pair if convention == "training" else lat_pair + lon_pair
    return (math.sin(week), math.cos(week), math.sin(hour), math.cos(hour), *location)


# ---------------------------------------------------------------------------------------------------
# Per-sensor input rules: what the stored values the v1.5 means/stds were computed on are, how
# products name each band, and the ground pixel sizes each sensor's training data held.
#
# What v1.5's training fed (read in Clay-foundation/stacchip and Clay-foundation/model):
# - chips hold each product's *stored* values: stacchip ``chipper.py`` ``get_pixels_for_asset``
#   (``src.read(window=..., out_shape=..., resampling=Resampling.nearest)``) reads the raw COG values,
#   no GDAL/STAC scale or offset applied; ``prechip.py`` ``get_chip`` stacks them per platform;
#   ``claymodel/datamodule.py`` ``EODataset.__getitem__`` only casts to float32 (S1: 10·log10) and
#   ``v2.Normalize(mean, std)`` with metadata.yaml's constants (``create_transforms``);
# - bands coarser than a product's finest are brought onto its grid by *nearest* (the same
#   ``out_shape`` read: an integer factor, each native pixel repeated);
# - sources: Sentinel-2 L2A from Earth Search v1's ``sentinel-2-l2a`` collection, 2018-2023
#   (``sentinel_2_processor.py`` STAC_API, ``random.sample(range(2018, 2024), 2)``), whose COGs of
#   processing baseline 04.00+ have the +1000 offset removed (``earthsearch:boa_offset_applied``;
#   Element84's word: cirrus-geo/cirrus-earth-search issue 21, 2022-02-27; the property is sometimes
#   false on COGs whose offset was removed all the same: cirrus-earth-search issue 33, Element84/earth-search
#   issues 24, 66, 71): harmonised DNs, as metadata.yaml's blue mean 1105 (below Clay v0's 1369) says too; Landsat 8/9
#   Collection 2 L1 and L2 from USGS landsatlook (``landsat_processor.py``, ``LANDSAT_8``/``LANDSAT_9``):
#   the stored uint16 DNs (SR: reflectance = DN · 2.75e-5 − 0.2, metadata.yaml means ~13 000);
#   NAIP 4-band uint8 COGs (``naip_processor.py``, ``rgbir_cog``; means ~110); Sentinel-1 RTC from
#   Planetary Computer (``sentinel_1_processor.py``): linear gamma0, made dB in the data module.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRule:
    """How one sensor's files are read for Clay v1.5.

    ``units``: what the model's input holds (the values its means/stds were computed on);
    ``dtypes``: stored data types accepted; ``scale``/``offset``: the product's documented stored
    value → reflectance (``None``: not reflectance, e.g. NAIP's 8-bit values), used to bring a file
    that declares another scale/offset back to the product's stored values; ``pixel_m``: ground
    pixel sizes (m) the sensor's training data held (outside: a warning); ``labels``: band → labels
    (case-insensitive) that products give it: band descriptions, file-name suffixes, STAC keys and
    common names; ``order``: the band order of the product's multi-band files without band
    descriptions (``None``: such files are refused); ``v0_units``: the band is brought to its units
    by Clay v0's rules (:mod:`clay.runtime.scenes.units`: S2 harmonised DNs, SAR linear power).
    """

    units: str
    source: str
    dtypes: tuple[str, ...]
    scale: float | None
    offset: float | None
    pixel_m: tuple[float, float]
    labels: dict[str, tuple[str, ...]]
    order: tuple[tuple[str, ...], ...] = ()
    v0_units: bool = False


_WIDE = ("uint16", "int16", "uint32", "int32", "float32", "float64")
_S2_LABELS = {
    "B02": ("B02", "B2", "blue"), "B03": ("B03", "B3", "green"), "B04": ("B04", "B4", "red"),
    "B05": ("B05", "B5", "rededge1"), "B06": ("B06", "B6", "rededge2"), "B07": ("B07", "B7", "rededge3"),
    "B08": ("B08", "B8", "nir"), "B8A": ("B8A", "nir08"), "B11": ("B11", "swir16"), "B12": ("B12", "swir22"),
}  # fmt: skip
#: Landsat 8/9 OLI band numbers (USGS "Landsat 8-9 OLI/TIRS Collection 2 Level 2 Science Product Guide":
#: SR_B2 blue … SR_B7 SWIR 2; HLS L30 v2.0 keeps them as B02…B07).
_OLI_LABELS = {
    "red": ("SR_B4", "B4", "B04", "red"), "green": ("SR_B3", "B3", "B03", "green"), "blue": ("SR_B2", "B2", "B02", "blue"),
    "nir08": ("SR_B5", "B5", "B05", "nir08", "nir"), "swir16": ("SR_B6", "B6", "B06", "swir16"),
    "swir22": ("SR_B7", "B7", "B07", "swir22"),
}  # fmt: skip
_RGBN = {"red": ("red",), "green": ("green",), "blue": ("blue",), "nir": ("nir", "nir08")}

INPUT_RULES: dict[str, InputRule] = {
    "sentinel-2-l2a": InputRule(
        "L2A surface reflectance x 10000, harmonised (no +1000 offset of processing baseline 04.00+)",
        "Earth Search v1 sentinel-2-l2a COGs (stacchip sentinel_2_processor.py), stored DNs with the offset removed",
        _WIDE, 1e-4, 0.0, (8.0, 12.5), _S2_LABELS, v0_units=True),
    "landsat-c2l2-sr": InputRule(
        "Landsat Collection 2 Level-2 surface reflectance as stored: uint16 DN, reflectance = DN * 2.75e-5 - 0.2",
        "USGS landsatlook landsat-c2l2-sr COGs (stacchip landsat_processor.py), stored DNs; USGS L2 Science Product Guide",
        _WIDE, 2.75e-5, -0.2, (25.0, 35.0), _OLI_LABELS),
    "landsat-c2l1": InputRule(
        "Landsat Collection 2 Level-1 as stored: uint16 DN, TOA reflectance = DN * 2e-5 - 0.1",
        "USGS landsatlook landsat-c2l1 COGs (stacchip landsat_processor.py), stored DNs; USGS Collection 2 Level-1 guide",
        _WIDE, 2e-5, -0.1, (25.0, 35.0), {b: tuple(lab for lab in v if not lab.startswith("SR_")) for b, v in _OLI_LABELS.items()}),
    "naip": InputRule(
        "NAIP 8-bit digital numbers as distributed (0-255)",
        "naip-analytic rgbir_cog COGs (stacchip naip_processor.py); USDA FSA NAIP: band 1 red, 2 green, 3 blue, 4 NIR",
        ("uint8",), None, None, (0.3, 1.25), _RGBN, order=(("red", "green", "blue", "nir"), ("red", "green", "blue"))),
    "linz": InputRule(
        "LINZ aerial imagery 8-bit digital numbers (0-255)", "stacchip linz_processor.py; LINZ RGB orthophotos",
        ("uint8",), None, None, (0.05, 1.0), {b: _RGBN[b] for b in ("red", "green", "blue")},
        order=(("red", "green", "blue"),)),
    "sentinel-1-rtc": InputRule(
        "backscatter as linear power (gamma0); the engine takes 10*log10 as claymodel datamodule.py did",
        "Planetary Computer sentinel-1-rtc (stacchip sentinel_1_processor.py), linear gamma0; datamodule.py makes dB",
        _WIDE, None, None, (8.0, 12.5), {"VV": ("VV",), "VH": ("VH",)}, v0_units=True),
    "modis": InputRule(
        "MOD09 surface reflectance as stored: int16 DN, reflectance = DN * 1e-4",
        "stacchip modis_processor.py; LP DAAC MOD09 user guide", _WIDE, 1e-4, 0.0, (400.0, 600.0),
        {f"sur_refl_b0{i}": (f"sur_refl_b0{i}", f"sur_refl_b0{i}_1") for i in range(1, 8)}),
    "planetscope-sr": InputRule(
        "PlanetScope surface reflectance x 10000 as stored", "metadata.yaml (named with --sensor only)",
        _WIDE, 1e-4, 0.0, (2.5, 6.0), {b: (b,) for b in SENSORS["planetscope-sr"].bands}),
    "satellogic-MSI-L1D": InputRule(
        "Satellogic L1D digital numbers as stored", "metadata.yaml (named with --sensor only)",
        _WIDE, None, None, (0.5, 1.5), {b: (b,) for b in SENSORS["satellogic-MSI-L1D"].bands}),
}  # fmt: skip


def band_for_label(sensor: str, label: str | None) -> str | None:
    """The band of ``sensor`` that ``label`` (a band description, a file name's band part, a STAC
    key or common name) names, or ``None``."""
    if not label:
        return None
    text = label.strip().upper()
    for suffix in (".TIF", ".TIFF", ".JP2", ".VRT"):
        text = text.removesuffix(suffix)
    for band, labels in INPUT_RULES[sensor].labels.items():
        if text in (lab.upper() for lab in labels):
            return band
    return None


def labels_any_sensor(label: str | None) -> bool:
    """Whether ``label`` names a band of any sensor of the table (a file that is a band of some scene)."""
    return any(band_for_label(name, label) for name in INPUT_RULES)
