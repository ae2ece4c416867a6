"""Chips to calibrate a statically quantised artifact on: real pixels, cut as ``clay-run`` cuts them.

Static int8 fixes each activation's range from what calibration chips produce, so they must look
like what the engine will be fed: the bundled demo scene (Sentinel-2 L2A, T48QUE, 2020-02-23, see
``clay.runtime.demo``) read by the runtime's own reader (``open_scene`` + ``read_chip``: the same
units, resampling and edge rules as inference). Bands the demo scene does not have (Clay v0's S1
and DEM groups) are taken from generated chips of realistic ranges
(:func:`clay.training.synthetic.make_chips`), because no real scene here has all 13 bands (see the
shared data README); the export log says which bands those were.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from clay.runtime.bands import BAND_NAMES
from clay.runtime.demo import DEMO_SCENE
from clay.runtime.metadata import EngineMetadata
from clay.runtime.options import RunOptions
from clay.runtime.scenes.reader import read_chip
from clay.runtime.scenes.scene import open_scene
from clay.training.synthetic import make_chips

#: Feeds per calibration: the demo scene has 9 chips of 512 px (25 of 256 px); 8 measured enough for
#: Clay v0 ``small`` (min cosine 0.99996 against eager fp32 on generated chips).
CALIBRATION_CHIPS = 8


SATURATED_DN = 65535.0  # a 16-bit optical product's largest value (S2 L2A DNs)


class NoCalibrationChips(ValueError):
    """The demo scene cannot give this engine's bands (a Clay v1.5 sensor other than Sentinel-2)."""


def demo_bands() -> set[str]:
    """The band names the bundled demo scene has (one GeoTIFF per band, named as the band)."""
    return {path.stem for path in DEMO_SCENE.glob("*.tif")}


def calibration_feeds(metadata: EngineMetadata, count: int = CALIBRATION_CHIPS) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Up to ``count`` one-chip feeds (and one more, the first with its upper half saturated) ``{"pixels": [1, C, S, S], "lonlat": [1, 2], "date": [1, 3]}``
    for an engine with ``metadata`` (its bands, band means, chip size), and the names of the bands
    that were generated rather than read (empty when the demo scene has them all)."""
    real = [b for b in metadata.bands if b in demo_bands()]
    generated = [b for b in metadata.bands if b not in real]
    if not real or any(b not in BAND_NAMES for b in generated):
        missing = ", ".join(b for b in generated if b not in BAND_NAMES) or ", ".join(generated)
        raise NoCalibrationChips(f"no calibration chips for bands {missing} (the demo scene is Sentinel-2 L2A)")
    index = [metadata.bands.index(b) for b in real]
    sub = replace(metadata, bands=tuple(real), band_means=tuple(metadata.band_means[i] for i in index),
                  band_stds=tuple(metadata.band_stds[i] for i in index))  # fmt: skip
    scene = open_scene(DEMO_SCENE, sub, RunOptions())
    grid = scene.chips()
    # spread over the scene (its fields, river, reservoir, villages), not the first row of small chips
    chips = [grid[k] for k in sorted({round(x) for x in np.linspace(0, len(grid) - 1, min(count, len(grid)))})]
    pixels = np.zeros((len(chips), len(metadata.bands), metadata.chip_size, metadata.chip_size), np.float32)
    for k, chip in enumerate(chips):
        pixels[k, index] = read_chip(scene, chip)[0]
    if generated:
        synthetic = make_chips(len(chips), seed=11, size=metadata.chip_size)[0]  # [N, 13, S, S], v0's band order
        for band in generated:
            pixels[:, metadata.bands.index(band)] = synthetic[:, BAND_NAMES.index(band)]
    day = scene.date
    date = np.array([[day.year, day.month, day.day]], np.float32)
    feeds = [{"pixels": pixels[k : k + 1], "lonlat": np.array([scene.chip_centre(chip)], np.float32), "date": date}
             for k, chip in enumerate(chips)]  # fmt: skip
    # and the first chip with its upper half saturated (16-bit maximum in the demo's optical bands), as
    # the export check's extreme chip has it: without it the ranges fit clear land only, and a
    # saturated chip (the check's, bright cloud, sun glint) clips (cosine 0.986 measured, v1.5 tiny)
    saturated = feeds[0]["pixels"].copy()
    saturated[:, index, : metadata.chip_size // 2] = SATURATED_DN
    feeds.append(dict(feeds[0], pixels=saturated))
    return feeds, generated
