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


def parse_sensors(text: str) -> tuple[str, ...]:
    """``"sentinel-2-l2a,landsat-c2l2-sr"`` → the names, in the order given, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SensorError(f"no sensor named; Clay v1.5 knows: {', '.join(SENSORS)}")
    for name in names:
        sensor_named(name)
    return tuple(dict.fromkeys(names))


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
