"""Per-cell cosine distance between runs, written as a Cloud-Optimized GeoTIFF on their grid.

Distance = 1 − cos(a, b) = 1 − a·b / (‖a‖ ‖b‖), per cell, in float64 then stored float32: 0 for the
same direction, 1 for orthogonal vectors, at most 2. NaN (the file's nodata) where either run's cell
is nodata (or a vector is all zeros, which has no direction). One band per compared run, in the
order given, each the distance of that run's cells from the reference's; band descriptions and
per-band tags name both dates and files; dataset tags name every run's date, scene, engine and model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy as gdal_copy

from ..outputs.publish import naming, partial_path, publish
from .cells import RunCells

#: Rows of cells compared at a time: a raster is never read whole (16 rows × 343 cells × 768
#: dimensions × 8 bytes = 34 MB a run).
STRIPE = 64
MEASURE = (
    "cosine distance per cell: 1 - a.b / (|a| |b|), 0 same direction, 2 opposite; NaN: nodata in either run"
)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a``, ``b`` ``[..., dim]`` (NaN: nodata) → ``[...]`` float64 distance, NaN where either is
    nodata or has no direction (zero norm)."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.einsum("...k,...k->...", a, b) / norms
    return np.where(norms > 0, 1.0 - cosine, np.nan)


def distances(reference: RunCells, others: list[RunCells]) -> np.ndarray:
    """``[len(others), height, width]`` float32 distances of each run's cells from the reference's."""
    grid = reference.grid
    out = np.full((len(others), grid.height, grid.width), np.nan, np.float32)
    for row in range(0, grid.height, STRIPE):
        rows = min(STRIPE, grid.height - row)
        base = reference.read(row, rows)
        for k, other in enumerate(others):
            out[k, row : row + rows] = cosine_distance(base, other.read(row, rows))
    return out


def describe_run(run: RunCells) -> dict:
    """What the tags say about one run: its file, date, scene and engine."""
    e = run.engine
    return {"file": str(run.path), "kind": run.kind, "encoding": run.encoding, "date": run.date,
            "scene": run.source_url, "model": f"{e.get('model', 'clay-v0')} {e.get('model_size')} ({e.get('weights')})",
            "engine": f"{e.get('precision')}, {len(e.get('bands', []))} bands, checkpoint sha256 "
                      f"{str(e.get('checkpoint_sha256', ''))[:12]}"}  # fmt: skip


def band_description(run: RunCells, reference: RunCells) -> str:
    return f"cosine distance {run.date} ({run.label}) from {reference.date} ({reference.label})"


@dataclass(frozen=True)
class ChangeMap:
    """The distances and what they compare (``values``: ``[bands, height, width]`` float32)."""

    values: np.ndarray
    reference: RunCells
    others: list[RunCells]

    def tags(self) -> dict[str, str]:
        runs = [self.reference, *self.others]
        record = {"measure": MEASURE, "reference": describe_run(self.reference),
                  "bands": [describe_run(r) for r in self.others]}  # fmt: skip
        return {
            "CLAY_CHANGE": json.dumps(record),
            "CLAY_REFERENCE_DATE": self.reference.date,
            "CLAY_DATES": ",".join(r.date for r in runs),
            "CLAY_SCENES": json.dumps([r.source_url for r in runs]),
            "CLAY_ENGINES": json.dumps([describe_run(r)["engine"] for r in runs]),
            "CLAY_MODEL": describe_run(self.reference)["model"],
            "CLAY_ENGINE": json.dumps(self.reference.engine),
        }

    def band_tags(self, k: int) -> dict[str, str]:
        run = self.others[k]
        return {"DATE": run.date, "REFERENCE_DATE": self.reference.date, "FILE": run.label,
                "REFERENCE_FILE": self.reference.label, "SCENE": run.source_url}  # fmt: skip


def write_cog(change: ChangeMap, path: Path) -> Path:
    """The distances as a float32 COG (ZSTD, floating-point predictor, averaged overviews) under
    ``<path>.partial``, published durably under ``path`` (see :mod:`clay.runtime.outputs.publish`)."""
    grid = change.reference.grid
    partial = partial_path(path)
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": len(change.values),
               "dtype": "float32", "nodata": float("nan"), "crs": grid.crs, "transform": grid.transform}  # fmt: skip
    with naming(path, (OSError, rasterio.errors.RasterioError)):
        with MemoryFile() as memory, memory.open(**profile) as dataset:
            dataset.write(change.values)
            dataset.update_tags(**change.tags())
            for k in range(len(change.values)):
                dataset.set_band_description(k + 1, band_description(change.others[k], change.reference))
                dataset.update_tags(k + 1, **change.band_tags(k))
            try:
                gdal_copy(dataset, str(partial), driver="COG", COMPRESS="ZSTD", PREDICTOR=3,
                          OVERVIEW_RESAMPLING="AVERAGE", BLOCKSIZE=256)  # fmt: skip
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        publish(partial, path)
    return path
