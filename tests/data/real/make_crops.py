"""Cut the small real-sample crops in this folder from the shared samples (``../shared/data``).

    python tests/data/real/make_crops.py ../shared/data

Each crop is a window of the original file: pixel values, data type, CRS, nodata and units are
unchanged; the georeferencing is the window's; files are recompressed (deflate with a predictor).
Provenance and licences: the NOTICE.md of each folder. Run once; the crops are committed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window, from_bounds

HERE = Path(__file__).parent
S2_10M = ("B2", "B3", "B4", "B8")
S2_20M = ("B5", "B6", "B7", "B8A", "B11", "B12")
S2_60M = ("B1", "B9")  # not Clay bands: kept so that discovery is seen to ignore them
CROP = 128  # px of the 10 m S2 grid: a quarter of a chip, padded by the runtime like any small scene


def copy_window(src_path: Path, dst_path: Path, window: Window) -> None:
    """``window`` of ``src_path`` as a new GeoTIFF, values and metadata unchanged."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        predictor = 3 if data.dtype.kind == "f" else 2
        profile = src.profile | {
            "width": data.shape[2], "height": data.shape[1], "transform": src.window_transform(window),
            "compress": "deflate", "predictor": predictor, "tiled": False,
        }  # fmt: skip
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**src.tags())
            for i in range(1, src.count + 1):
                if src.descriptions[i - 1]:
                    dst.set_band_description(i, src.descriptions[i - 1])
                if src.units[i - 1]:
                    dst.set_band_unit(i, src.units[i - 1])


def crop_ssl4eo(shared: Path) -> None:
    """The top-left 128² px of the S2 10 m grid (~1.3 km), the 20 m / 60 m bands over the same
    ground, and the S1 window on its own grid that covers it."""
    source, out = shared / "ssl4eo-s12-0000200", HERE / "ssl4eo-s12-0000200"
    s2, s1 = "s2l2a-20200604", "s1grd-20200607"
    with rasterio.open(source / s2 / "B2.tif") as ref:
        bounds = rasterio.windows.bounds(Window(0, 0, CROP, CROP), ref.transform)
    for product, bands in ((s2, S2_10M + S2_20M + S2_60M), (s1, ("VH", "VV"))):
        for band in bands:
            path = source / product / f"{band}.tif"
            copy_window(path, out / product / path.name, covering(path, bounds))


def covering(path: Path, bounds: tuple[float, float, float, float]) -> Window:
    """The whole-pixel window of ``path`` that covers ``bounds`` (clipped to the file)."""
    with rasterio.open(path) as src:
        exact = from_bounds(*bounds, transform=src.transform)
        col, row = math.floor(exact.col_off + 1e-6), math.floor(exact.row_off + 1e-6)
        width = math.ceil(exact.col_off + exact.width - 1e-6) - col
        height = math.ceil(exact.row_off + exact.height - 1e-6) - row
        return Window(col, row, width, height).intersection(Window(0, 0, src.width, src.height))


def crop_dem(shared: Path) -> None:
    """128² px (~3.8 × 2.8 km) from the middle of the Rome DEM."""
    path = shared / "dem-rome" / "Rome-30m-DEM.tif"
    with rasterio.open(path) as src:
        offset = (src.width - CROP) // 2
    copy_window(path, HERE / "dem-rome" / path.name, Window(offset, offset, CROP, CROP))


if __name__ == "__main__":
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "data")
    crop_ssl4eo(shared)
    crop_dem(shared)
