"""A run's patch embeddings on its cell grid, with what made them: the input ``clay-change`` compares.

Two kinds of file, as ``clay-run`` writes them:

- a **patch raster** (``<scene>.patches.tif``, :mod:`clay.runtime.outputs.patch_raster`): read as GDAL
  says to read it, ``read(masked=True)`` then each band's scale and offset (an int8 raster's codes
  become floats; code 0 / NaN is nodata); its tags name the engine, date and source.
- **patch rows** (``<scene>.patches.parquet``): placed on the cells of the patch raster the same run
  would write, by the same rule (:func:`clay.runtime.outputs.patch_grid.chip_claim`: of the patches
  containing a cell's centre, the nearest; ties to the first in grid order), from each row's
  ``row``/``col``/``chip_row``/``chip_col`` and the scene's grid in the file's ``clay:scene_grid``
  metadata. Where the file has the ``overlap`` column (True: ground another kept row already
  covers), only rows with ``overlap`` False are used. A file without ``clay:scene_grid`` (written by
  a clay-run before it recorded the grid) cannot be placed exactly and is refused.

Errors are :class:`ChangeError`, one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from ..metadata import EngineMetadata, MetadataError
from ..outputs.patch_grid import CellGrid, chip_claim
from ..outputs.patch_raster import tag_name
from ..scenes.grid import Chip

#: The GDAL tags a patch raster carries (``tag_name`` of the GeoParquet keys), read here.
ENGINE_TAG, DATE_TAG, SOURCE_TAG, RASTER_TAG = (tag_name(k) for k in ("clay:engine", "clay:date", "clay:source_url",
                                                                       "clay:raster"))  # fmt: skip
SCENE_CRS_TAG = tag_name("clay:scene_crs")
PATCH_COLUMNS = ("row", "col", "chip_row", "chip_col", "embeddings", "date", "source_url")


class ChangeError(ValueError):
    """An input ``clay-change`` cannot use, or inputs it cannot compare: one line for the user."""


@dataclass(frozen=True)
class Grid:
    """A run's cell grid: ``width`` × ``height`` cells placed by ``transform`` (a cell's, not a pixel's) in ``crs``."""

    crs: CRS
    transform: Affine
    width: int
    height: int


@dataclass
class RunCells:
    """One run's cells. :meth:`read` gives rows of cells as float64 ``[rows, width, dim]``, NaN where
    the cell is nodata (every value of a nodata cell is NaN)."""

    path: Path
    kind: str  # "patch raster" | "patch rows"
    grid: Grid
    dim: int
    engine: dict
    date: str
    source_url: str
    encoding: str  # how the vectors are stored: "float32", "int8 (dequantised)", "float32 rows"
    cells: np.ndarray | None = field(default=None, repr=False)  # patch rows: [height, width, dim] float32

    @property
    def label(self) -> str:
        return self.path.name

    def read(self, row: int, rows: int) -> np.ndarray:
        if self.cells is not None:
            return self.cells[row : row + rows].astype(np.float64)
        try:
            with rasterio.open(self.path) as src:
                data = src.read(window=Window(0, row, self.grid.width, rows), masked=True)
                scales, offsets = np.array(src.scales), np.array(src.offsets)
        except RasterioError as exc:
            raise ChangeError(f"{self.path}: cannot read ({exc})") from None
        values = data.astype(np.float64).filled(np.nan) * scales[:, None, None] + offsets[:, None, None]
        values = np.moveaxis(values, 0, -1)
        values[~np.isfinite(values).all(axis=-1)] = np.nan  # a cell is nodata as a whole
        return values


def open_run(path: Path) -> RunCells:
    """A patch raster or a patch-row GeoParquet file, by its suffix."""
    path = Path(path)
    if not path.exists():
        raise ChangeError(f"{path}: no such file")
    if path.is_dir():
        raise ChangeError(f"{path}: a folder; give the run's <scene>.patches.tif or <scene>.patches.parquet")
    if path.suffix == ".parquet":
        return _patch_rows(path)
    return _patch_raster(path)


def _engine(text: str | None, path: Path) -> dict:
    if not text:
        raise ChangeError(f"{path}: no clay engine record (not written by clay-run)")
    try:
        record = json.loads(text)
        EngineMetadata.from_dict(record)
    except (json.JSONDecodeError, MetadataError, TypeError) as exc:
        raise ChangeError(f"{path}: unreadable clay engine record ({exc})") from None
    return record


def _patch_raster(path: Path) -> RunCells:
    try:
        with rasterio.open(path) as src:
            tags, crs, transform = src.tags(), src.crs, src.transform
            width, height, count = src.width, src.height, src.count
    except RasterioError as exc:
        raise ChangeError(f"{path}: not a raster GDAL can open ({exc})") from None
    if RASTER_TAG not in tags:
        raise ChangeError(f"{path}: not a clay-run patch raster (no {RASTER_TAG} tag)")
    engine = _engine(tags.get(ENGINE_TAG), path)
    if count != engine["dim"]:
        raise ChangeError(
            f"{path}: {count} bands, but its engine's embeddings have {engine['dim']} dimensions"
        )
    if crs is None:
        raise ChangeError(f"{path}: the raster has no CRS")
    layout = json.loads(tags[RASTER_TAG])
    encoding = "int8 (dequantised)" if layout.get("dtype") == "int8" else layout.get("dtype", "float32")
    return RunCells(path, "patch raster", Grid(crs, transform, width, height), count, engine,
                    tags.get(DATE_TAG, ""), tags.get(SOURCE_TAG, ""), encoding)  # fmt: skip


def _patch_rows(path: Path) -> RunCells:
    try:
        schema = pq.read_schema(path)
    except (OSError, pq.lib.ArrowException) as exc:
        raise ChangeError(f"{path}: not a Parquet file ({exc})") from None
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    if "chip_row" not in schema.names:
        raise ChangeError(f"{path}: chip rows (one per chip); clay-change needs patch rows (<scene>.patches.parquet, "
                          "clay-run --patch-embeddings) or a patch raster (--patch-raster)")  # fmt: skip
    missing = [c for c in PATCH_COLUMNS if c not in schema.names]
    if missing:
        raise ChangeError(f"{path}: not clay-run patch rows (no {', '.join(missing)} column)")
    engine = _engine(meta.get("clay:engine"), path)
    if "clay:scene_grid" not in meta or "clay:scene_crs" not in meta:
        raise ChangeError(f"{path}: no clay:scene_grid in its metadata (written before clay-run recorded the scene's "
                          "grid), so its rows cannot be placed on cells exactly; re-run clay-run, or use its "
                          "patch raster (--patch-raster)")  # fmt: skip
    scene = json.loads(meta["clay:scene_grid"])
    columns = [*PATCH_COLUMNS, *(["overlap"] if "overlap" in schema.names else [])]
    table = pq.read_table(path, columns=columns)
    if "overlap" in table.column_names:  # take each piece of ground once, as the patch raster does
        keep = ~np.asarray(table["overlap"].fill_null(False).to_numpy(zero_copy_only=False), bool)
        table = table.filter(keep)
    dates = sorted({d.isoformat() for d in table["date"].to_pylist() if d is not None})
    if len(dates) > 1:
        raise ChangeError(
            f"{path}: rows of several dates ({', '.join(dates)}); one run of one scene is one date"
        )
    sources = table["source_url"].unique().to_pylist()
    patch = int(engine["patch_size"])
    cells = place_rows(table, CellGrid.of(Affine.from_gdal(*scene["geotransform"]), scene["width"], scene["height"], patch),
                       int(engine["chip_size"]), int(engine["dim"]))  # fmt: skip
    transform = Affine.from_gdal(*scene["geotransform"]) @ Affine.scale(patch)
    grid = Grid(CRS.from_user_input(meta["clay:scene_crs"]), transform, cells.shape[1], cells.shape[0])
    return RunCells(path, "patch rows", grid, int(engine["dim"]), engine, dates[0] if dates else "",
                    sources[0] if len(sources) == 1 else ", ".join(map(str, sources)), "float32 rows", cells)  # fmt: skip


def place_rows(table, grid: CellGrid, chip_size: int, dim: int) -> np.ndarray:
    """Patch rows onto ``grid``'s cells by the patch raster's rule: ``[height, width, dim]`` float32,
    NaN where no row's patch contains the cell's centre. Chips are taken in grid order (ties go to
    the first); a cell whose nearest patch has no row (an ``overlap`` row left out) keeps the
    nearest patch that has one."""
    rows = np.asarray(table["row"]).astype(np.int64)
    cols = np.asarray(table["col"]).astype(np.int64)
    chip_rows = np.asarray(table["chip_row"]).astype(np.int64)
    chip_cols = np.asarray(table["chip_col"]).astype(np.int64)
    vectors = (
        np.stack(table["embeddings"].to_numpy(zero_copy_only=False)) if len(rows) else np.zeros((0, dim))
    )
    cells = np.full((grid.height, grid.width, dim), np.nan, np.float32)
    best = np.full((grid.height, grid.width), np.inf, np.float32)
    side = chip_size // grid.cell
    order = np.lexsort((chip_cols, chip_rows))
    starts = np.flatnonzero(
        np.r_[True, np.diff(chip_rows[order]) != 0] | np.r_[True, np.diff(chip_cols[order]) != 0]
    )
    for first, stop in zip(starts, [*starts[1:], len(order)]):
        members = order[first:stop]
        r0, c0 = int(chip_rows[members[0]]), int(chip_cols[members[0]])
        chip = Chip(r0, c0, min(chip_size, grid.scene_height - r0), min(chip_size, grid.scene_width - c0))
        claim = chip_claim(chip, grid)
        if claim is None:
            continue
        index = np.full((side, side), -1, np.int64)  # the row holding each patch (i, j) of the chip
        index[(rows[members] - r0) // grid.cell, (cols[members] - c0) // grid.cell] = members
        owner = index[claim.i][:, claim.j]
        h, w = owner.shape
        current = best[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w]
        wins = (claim.distance2 < current) & (owner >= 0)
        target = cells[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w]
        target[wins] = vectors[owner[wins]]
        current[wins] = claim.distance2[wins]
    return cells
