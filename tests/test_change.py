"""``clay-change``: per-cell cosine distance between runs of one place at different dates.

The runs: the bundled demo scene (per-band files, 1068² px, 9 chips) as "2020-02-23", and a copy as
"2020-03-04" whose top-left chip (512² px, cells 0…15 × 0…15; each band's file altered at its own
resolution) holds the pixels of the chip diagonally below it: a change on the ground. Embedded with
the bundled demo engine (no torch). Expected distances are computed here with numpy from the
rasters as rasterio reads them (scales and offsets applied), not by the runtime's code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime import ClayEmbedder, RunOptions
from clay.runtime.cli import DEMO_ENGINE, DEMO_SCENE
from PIL import Image
from rasterio.transform import Affine

BLOCK = 16  # cells (of 32 px) of the altered chip along each axis
DATES = {"a": "2020-02-23", "b": "2020-03-04"}


def demo_copy(folder: Path, date: str, altered: bool) -> Path:
    """The demo scene's band files, dated ``date``; ``altered``: the top-left chip replaced by the one below-right."""
    folder.mkdir(parents=True)
    for path in sorted(Path(DEMO_SCENE).glob("B*.tif")):
        with rasterio.open(path) as src:
            data, profile, tags = src.read(), src.profile, src.tags()
        if altered:
            k = 512 * src.width // 1068  # the chip in this band's own pixels (10 m or 20 m)
            data[:, :k, :k] = data[:, k : 2 * k, k : 2 * k]
        with rasterio.open(folder / path.name, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**{**tags, "date": date})
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs[name, dtype]``: the run's ScenePaths (patch raster and patch rows) for a and b, float32 and int8."""
    folder, done = tmp_path_factory.mktemp("change"), {}
    scenes = {name: demo_copy(folder / name, date, name == "b") for name, date in DATES.items()}
    with ClayEmbedder(DEMO_ENGINE, options=RunOptions(readers=2)) as embedder:
        for name, scene in scenes.items():
            for dtype in ("float32", "int8"):
                options = RunOptions(readers=2, patch_embeddings=True, patch_raster=True, raster_dtype=dtype)
                done[name, dtype] = embedder.embed_scene_to(
                    scene, folder / f"out-{dtype}" / f"{name}.parquet", options
                )
    return done


def clay_change(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.change.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def read_vectors(path: Path) -> np.ndarray:
    """``[H, W, dim]`` float64 as GDAL's metadata says to read the raster (masked, scale, offset), NaN: nodata."""
    with rasterio.open(path) as src:
        data = src.read(masked=True).astype(np.float64).filled(np.nan)
        data = data * np.array(src.scales)[:, None, None] + np.array(src.offsets)[:, None, None]
    return np.moveaxis(data, 0, -1)


def numpy_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_altered_chip_is_far_and_the_rest_near_with_numpys_cosine_on_the_rasters_grid(
    runs, tmp_path, dtype
):
    a, b = runs["a", dtype].raster, runs["b", dtype].raster
    out = tmp_path / "change.tif"
    result = clay_change(a, b, "--out", out)
    assert result.returncode == 0, result.stderr
    expected = numpy_distance(read_vectors(a), read_vectors(b))
    with rasterio.open(out) as got, rasterio.open(a) as src:
        values = got.read(1)
        assert (got.crs, got.transform, got.width, got.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        assert got.count == 1 and got.dtypes[0] == "float32" and np.isnan(got.nodata)
        assert got.descriptions[0] == f"cosine distance 2020-03-04 ({b.name}) from 2020-02-23 ({a.name})"
        tags, band = got.tags(), got.tags(1)
    np.testing.assert_allclose(values, expected, rtol=0, atol=2e-6)
    inside, outside = (
        values[:BLOCK, :BLOCK],
        np.concatenate([values[BLOCK:].ravel(), values[:BLOCK, BLOCK:].ravel()]),
    )
    assert np.median(inside) > 0.2 and inside.min() > 0.01, np.median(inside)
    # the unchanged chips: the same pixels, nearly the same vectors (the demo engine quantises activations to
    # int8 per batch, so a chip's batch-mates move its vectors slightly: up to 2e-4 here)
    assert outside.max() < 1e-3 and np.median(inside) > 100 * np.median(outside), (
        outside.max(),
        np.median(outside),
    )
    assert tags["CLAY_DATES"] == "2020-02-23,2020-03-04" and tags["CLAY_REFERENCE_DATE"] == "2020-02-23"
    record = json.loads(tags["CLAY_CHANGE"])
    assert record["reference"]["file"] == str(a) and record["bands"][0]["date"] == "2020-03-04"
    assert (
        record["bands"][0]["scene"].endswith("/b") and "int8" in record["reference"]["engine"]
    )  # the demo engine is int8
    assert json.loads(tags["CLAY_SCENES"])[1].endswith("/b") and band["DATE"] == "2020-03-04"
    assert json.loads(tags["CLAY_ENGINE"])["model_size"] == "tiny"
    with Image.open(out.with_suffix(".png")) as png:  # the quicklook, beside the map
        assert png.format == "PNG" and png.width >= 34 * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.png", "change.tif"]  # no partials left


def test_patch_rows_give_the_rasters_distances_and_the_overlap_column_is_honoured(runs, tmp_path):
    from_raster = tmp_path / "raster.tif"
    assert (
        clay_change(runs["a", "float32"].raster, runs["b", "float32"].raster, "--out", from_raster).returncode
        == 0
    )
    rows_a, rows_b = runs["a", "float32"].patches, runs["b", "float32"].patches
    result = clay_change(rows_a, rows_b, "--out", tmp_path / "rows.tif")
    assert result.returncode == 0, result.stderr
    with rasterio.open(from_raster) as r1, rasterio.open(tmp_path / "rows.tif") as r2:
        np.testing.assert_allclose(r2.read(1), r1.read(1), rtol=0, atol=1e-9)
        assert (r1.transform, r1.crs, r1.shape) == (r2.transform, r2.crs, r2.shape)

    def with_overlap(source: Path, target: Path, mark) -> Path:
        table = pq.read_table(source)
        overlap = pa.array(mark(np.asarray(table["row"]), np.asarray(table["col"]), np.asarray(table["chip_row"]),
                                np.asarray(table["chip_col"])), pa.bool_())  # fmt: skip
        # clay-run writes the column: the test's marking replaces it (files of older runs lack it)
        if "overlap" in table.column_names:
            table = table.drop_columns(["overlap"])
        pq.write_table(table.append_column("overlap", overlap), target)
        return target

    # the shifted edge chips' patches left of (above) the last multiple of 512: the ground their neighbours cover
    def shifted_repeats(row, col, chip_row, chip_col):
        return ((chip_col % 512 != 0) & (col < 1024)) | ((chip_row % 512 != 0) & (row < 1024))

    marked = [
        with_overlap(p, tmp_path / f"{p.stem}.marked.parquet", shifted_repeats) for p in (rows_a, rows_b)
    ]
    assert clay_change(*marked, "--out", tmp_path / "marked.tif").returncode == 0
    with rasterio.open(from_raster) as r1, rasterio.open(tmp_path / "marked.tif") as r2:
        np.testing.assert_allclose(r2.read(1), r1.read(1), rtol=0, atol=1e-9)
    # every row of the top-left chip marked: its cells have no row left, so they are nodata
    dropped = with_overlap(rows_b, tmp_path / "dropped.parquet", lambda r, c, cr, cc: (cr == 0) & (cc == 0))
    assert clay_change(rows_a, dropped, "--out", tmp_path / "dropped.tif").returncode == 0
    with rasterio.open(tmp_path / "dropped.tif") as got:
        values = got.read(1)
    assert np.isnan(values[:BLOCK, :BLOCK]).all() and np.isfinite(values[BLOCK:]).all()


def test_a_time_series_gives_one_band_per_date_from_the_named_reference(runs, tmp_path):
    a, b, a8 = runs["a", "float32"].raster, runs["b", "float32"].raster, runs["a", "int8"].patches
    out = tmp_path / "series.tif"
    result = clay_change(a, b, a8, "--out", out, "--reference", "2020-03-04")
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as got:
        assert got.count == 2 and got.tags()["CLAY_REFERENCE_DATE"] == "2020-03-04"
        assert got.descriptions == (f"cosine distance 2020-02-23 ({a.name}) from 2020-03-04 ({b.name})",
                                    f"cosine distance 2020-02-23 ({a8.name}) from 2020-03-04 ({b.name})")  # fmt: skip
        first, second = got.read(1), got.read(2)
    np.testing.assert_allclose(first, numpy_distance(read_vectors(b), read_vectors(a)), rtol=0, atol=2e-6)
    np.testing.assert_allclose(second, first, rtol=0, atol=2e-6)  # patch rows of another run of the same scene
    assert clay_change(a, b, "--reference", "2021-01-01", "--out", tmp_path / "x.tif").returncode == 1


def rewritten(source: Path, target: Path, transform=None, crs=None, engine=None) -> Path:
    """A copy of a patch raster with its grid or engine record changed (the cells untouched)."""
    shutil.copy(source, target)
    with rasterio.open(target, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        if transform is not None:
            dst.transform = transform
        if crs is not None:
            dst.crs = crs
        if engine is not None:
            dst.update_tags(CLAY_ENGINE=json.dumps({**json.loads(dst.tags()["CLAY_ENGINE"]), **engine}))
    return target


def test_runs_that_cannot_be_compared_are_one_line_each_and_nothing_is_written(runs, tmp_path):
    a, b = runs["a", "float32"].raster, runs["b", "float32"].raster
    with rasterio.open(a) as src:
        transform = src.transform
    cases = {
        "origin": (
            rewritten(b, tmp_path / "moved.tif", transform=transform @ Affine.translation(1, 0)),
            "origin",
        ),
        "crs": (rewritten(b, tmp_path / "crs.tif", crs="EPSG:32647"), "CRS EPSG:32648 vs EPSG:32647"),
        "model": (
            rewritten(b, tmp_path / "model.tif", engine={"model_size": "small"}),
            "model model_size tiny vs small",
        ),
        "engine": (
            rewritten(b, tmp_path / "fp32.tif", engine={"precision": "fp32"}),
            "engine precision int8 vs fp32",
        ),
        "sensor": (rewritten(b, tmp_path / "bands.tif", engine={"bands": ["B02", "B03"]}), "sensor bands"),
        # another model differs in everything: the model is named, not every field after it
        "v1.5": (rewritten(b, tmp_path / "v15.tif", engine={"model": "clay-v1.5", "sensor": "sentinel-2-l2a",
                                                           "precision": "fp32", "bands": ["B02"]}),
                 "model clay-v0 vs clay-v1.5"),
        "chips": (runs["b", "float32"].output, "chip rows (one per chip)"),
    }
    for name, (other, says) in cases.items():
        out = tmp_path / f"{name}-change.tif"
        result = clay_change(a, other, "--out", out)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and says in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr and not out.exists() and not out.with_suffix(".png").exists()
        if name == "v1.5":
            assert "sensor" not in lines[0].split("cannot be compared")[1] and len(lines[0]) < 400 + len(str(a)) * 2
    # patch rows from before clay-run recorded the scene's grid cannot be placed exactly: refused
    table = pq.read_table(runs["b", "float32"].patches)
    old = {k: v for k, v in table.schema.metadata.items() if k != b"clay:scene_grid"}
    pq.write_table(table.replace_schema_metadata(old), tmp_path / "old.patches.parquet")
    result = clay_change(a, tmp_path / "old.patches.parquet", "--out", tmp_path / "old.tif")
    assert (
        result.returncode == 1
        and "no clay:scene_grid" in result.stderr
        and not (tmp_path / "old.tif").exists()
    )
    twice = clay_change(a, a, "--out", tmp_path / "same.tif")
    assert twice.returncode == 1 and "given twice" in twice.stderr and not (tmp_path / "same.tif").exists()
    usage = clay_change(a, "--out", tmp_path / "one.tif")
    assert usage.returncode == 2 and "two or more runs" in usage.stderr
