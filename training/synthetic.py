"""Realistic generated chips and scenes for tests, examples and benchmarks (torch-free).

Real 13-band Clay inputs cannot be shipped in bulk, and random uniform noise is far from what the
model sees, so this draws a smooth land-cover map (water, vegetation, bare soil, built-up) and gives
each class a plausible spectrum: S2 digital numbers (reflectance × 1e4), Sentinel-1 linear gamma0
(VH below VV) and a smooth DEM in metres. Files are valid GeoTIFFs laid out like the release's chips.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from clay.runtime.bands import BAND_NAMES, CHIP_SIZE

#: Per land-cover class: 10 S2 DNs (B02…B12), VH, VV (linear gamma0).
_SPECTRA = np.array(
    [
        # B02  B03  B04  B05  B06  B07  B08  B8A  B11  B12   VH     VV
        [700, 800, 600, 550, 450, 400, 350, 330, 150, 100, 0.002, 0.012],  # water
        [400, 700, 450, 1100, 2600, 3200, 3500, 3600, 1900, 900, 0.030, 0.120],  # vegetation
        [1200, 1500, 1900, 2200, 2500, 2700, 2800, 2900, 3300, 2600, 0.015, 0.080],  # bare soil
        [1500, 1600, 1700, 1800, 1900, 2000, 2100, 2150, 2300, 2100, 0.060, 0.350],  # built-up
    ],
    dtype=np.float32,
)


def _smooth_field(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """Smooth random field in [0, 1] by bilinear upsampling of a coarse noise grid."""
    gh, gw = height // scale + 2, width // scale + 2
    coarse = rng.random((gh, gw), dtype=np.float32)
    ys = np.linspace(0, gh - 1.001, height, dtype=np.float32)
    xs = np.linspace(0, gw - 1.001, width, dtype=np.float32)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def make_scene_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A float32 ``[13, height, width]`` cube in raw physical units, spec band order."""
    rng = np.random.default_rng(seed)
    cover = np.stack([_smooth_field(rng, height, width, 96) for _ in range(len(_SPECTRA))])
    classes = cover.argmax(axis=0)
    cube = np.empty((len(BAND_NAMES), height, width), dtype=np.float32)
    texture = 0.85 + 0.3 * _smooth_field(rng, height, width, 8)
    cube[:12] = _SPECTRA[classes].transpose(2, 0, 1) * texture
    cube[:10] += rng.normal(0, 40, size=(10, height, width)).astype(np.float32)
    cube[:10] = np.clip(cube[:10], 1, 10000)
    speckle = rng.gamma(4.0, 0.25, size=(2, height, width)).astype(np.float32)  # multiplicative SAR noise
    cube[10:12] *= speckle
    cube[12] = 20 + 400 * _smooth_field(rng, height, width, 256)
    return cube


def make_chips(count: int, seed: int = 0, size: int = CHIP_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` realistic chips → (pixels ``[N, 13, size, size]`` raw float32, lonlat ``[N, 2]``
    degrees, date ``[N, 3]`` year/month/day), for checks and benchmarks that need arrays, not files."""
    rng = np.random.default_rng(seed)
    pixels = np.stack([make_scene_array(size, size, seed=seed * 1000 + i) for i in range(count)])
    lonlat = np.stack([rng.uniform(-180, 180, count), rng.uniform(-60, 70, count)], axis=1)
    date = np.stack(
        [rng.integers(2017, 2024, count), rng.integers(1, 13, count), rng.integers(1, 29, count)], axis=1
    )
    return pixels.astype(np.float32), lonlat.astype(np.float32), date.astype(np.float32)


def write_scene(
    path: str | Path,
    width: int,
    height: int,
    *,
    seed: int = 0,
    dtype: str = "float32",
    bands: Sequence[str] = BAND_NAMES,
    date: str | None = "2020-02-23",
    crs: str | None = "EPSG:32648",
    origin: tuple[float, float] = (362600.0, 1987080.0),
    pixel_size: float = 10.0,
    nodata_fraction: float = 0.0,
    band_descriptions: bool = True,
    band_count: int | None = None,
    with_date_tag: bool = True,
    with_crs: bool = True,
    tile: int | None = None,
) -> Path:
    """Write a generated scene as a tiled, deflate-compressed GeoTIFF and return its path.

    ``nodata_fraction`` blanks a block in the bottom-right corner: NaN in float32 files, 0 (the S2
    nodata value, also declared as the file's nodata) in integer files. Integer dtypes cannot hold
    linear SAR values, so they are refused for scenes with VH/VV. ``band_count``, ``with_date_tag``
    and ``with_crs`` make deliberately broken files for tests (first N bands, no tag, no CRS).
    ``tile`` repeats one generated ``tile`` × ``tile`` area to fill a large scene in seconds.
    """
    import rasterio  # here, not at the top: generated chips in memory need only numpy
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    path = Path(path)
    if band_count is not None:
        bands = BAND_NAMES[:band_count]
    date = date if with_date_tag else None
    crs = crs if with_crs else None
    unknown = [b for b in bands if b not in BAND_NAMES]
    if unknown:
        raise ValueError(f"unknown band names {unknown}")
    if np.dtype(dtype).kind in "iu" and any(b in ("VH", "VV") for b in bands):
        raise ValueError("SAR bands are linear gamma0 (~0-1) and need a float dtype")
    if tile:  # a large scene quickly: one generated tile × tile area repeated (same statistics, same compression)
        block = make_scene_array(min(tile, height), min(tile, width), seed)
        reps = (1, -(-height // block.shape[1]), -(-width // block.shape[2]))
        cube = np.tile(block, reps)[:, :height, :width][[BAND_NAMES.index(b) for b in bands]]
    else:
        cube = make_scene_array(height, width, seed)[[BAND_NAMES.index(b) for b in bands]]
    floating = np.dtype(dtype).kind == "f"
    nodata = float("nan") if floating else 0
    if nodata_fraction > 0:
        side = np.sqrt(nodata_fraction)
        cube[:, height - int(round(height * side)) :, width - int(round(width * side)) :] = nodata
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": dtype,
        "transform": from_origin(origin[0], origin[1], pixel_size, pixel_size),
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "nodata": nodata,
        "num_threads": "all_cpus",  # GDAL compresses blocks in parallel; the file is the same
    }
    if crs is not None:
        profile["crs"] = CRS.from_user_input(crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cube if floating else np.rint(cube).astype(dtype))
        if band_descriptions:
            for i, name in enumerate(bands, start=1):
                dst.set_band_description(i, name)
        if date is not None:
            dst.update_tags(date=date)
    return path


def write_chip(path: str | Path, **kwargs) -> Path:
    """A 512 × 512 chip file like the release's training chips (float32 by default)."""
    return write_scene(path, CHIP_SIZE, CHIP_SIZE, **kwargs)


def main() -> None:
    """``python -m clay.training.synthetic OUT.tif [WIDTH HEIGHT]``: write a generated 13-band scene."""
    import sys

    args = sys.argv[1:]
    if not args or len(args) not in (1, 3):
        sys.exit("usage: python -m clay.training.synthetic OUT.tif [WIDTH HEIGHT]")
    width, height = (int(args[1]), int(args[2])) if len(args) == 3 else (1300, 900)
    print(write_scene(args[0], width, height, seed=0, nodata_fraction=0.02))


if __name__ == "__main__":
    main()
