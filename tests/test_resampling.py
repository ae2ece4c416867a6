"""Resampling as the weights were trained (issue 35): what the engine records, what a run applies and
says, and reads that equal GDAL's resampled reads of the same windows, computed here with rasterio
and numpy directly (not the runtime's reader)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.engines.choice import read_engine_metadata
from clay.runtime.metadata import EngineMetadata, MetadataError
from clay.runtime.options import RunOptions
from clay.runtime.resampling import choose_resampling
from clay.runtime.scenes.reader import read_chip
from clay.runtime.scenes.scene import open_scene
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window

from .inputs import write_stack

TEN_M = ("B02", "B03", "B04", "B08")
TWENTY_M = tuple(b for b in S2_BANDS if b not in TEN_M)
DEMO = read_engine_metadata(DEMO_ENGINE)
NEAREST = RunOptions(resampling="nearest")


def s2_folder(folder: Path, size: tuple[int, int] = (587, 601), shift: tuple[int, int] = (1, 1), nodata: float | None = None,
              holes: bool = True, coarse_px: float = 20.0, seed: int = 0, offset: int = 0) -> Path:  # fmt: skip
    """Ten single-band S2 files as archives lay them out: 10 m bands on the scene grid (``size`` rows,
    cols: odd, so edge chips start at odd pixels), the others ``coarse_px`` m, whose grid starts
    ``shift`` (rows, cols) 10 m pixels up and left of the scene's (a phase the repetition must honour)
    and covers it. ``holes``: L2A NO_DATA zeros in every band over a shared area, and in the 20 m
    bands alone a few isolated source pixels of zero, and of ``nodata`` when given. ``offset``: stored
    DN + ``offset`` where valid, declared as ``BOA_ADD_OFFSET`` −``offset`` (processing baseline 04.00+)."""
    rng = np.random.default_rng(seed)
    rows, cols = size
    x0, y0 = 600000.0, 5000000.0
    for band in S2_BANDS:
        coarse = band in TWENTY_M
        if coarse:
            px = coarse_px
            origin = (x0 - 10 * shift[1], y0 + 10 * shift[0])
            shape = (int(np.ceil((rows * 10 + 10 * shift[0]) / px)) + 1, int(np.ceil((cols * 10 + 10 * shift[1]) / px)) + 1)
        else:
            px, origin, shape = 10.0, (x0, y0), (rows, cols)
        data = rng.integers(1, 12000, shape).astype(np.uint16)
        if holes:  # a slanted swath edge of zeros on the ground, the same in every band
            r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
            east = origin[0] + (c + 0.5) * px
            north = origin[1] - (r + 0.5) * px
            data[(east - x0) > 4500 + (y0 - north) * 0.6] = 0
            if coarse:
                data[rng.integers(0, shape[0], 40), rng.integers(0, shape[1], 40)] = 0
                if nodata is not None:
                    data[rng.integers(0, shape[0], 40), rng.integers(0, shape[1], 40)] = nodata
        if offset:
            data = np.where((data == 0) | (data == (nodata if nodata is not None else 0)), data, data + offset)
        tags = {"date": "2021-06-01", **({"BOA_ADD_OFFSET": str(-offset)} if offset else {})}
        write_stack(folder / f"{band}.tif", data[None], Affine(px, 0, origin[0], 0, -px, origin[1]), "EPSG:32633", [None],
                    nodata=nodata if coarse else None, tags=tags)  # fmt: skip
    return folder


def rasterio_chip(folder: Path, scene, chip, method: Resampling, offset: int = 0) -> tuple[np.ndarray, float]:
    """The chip as read here with rasterio alone: every band's window of the scene grid (the 20 m
    ones by a resampled window read with ``method``), invalid where 0 (L2A NO_DATA) or the file's
    nodata, filled with the band means, the edges padded by replicating the last row and column; and
    the share of real pixels where any band is invalid."""
    size = scene.chip_size
    values = np.empty((len(S2_BANDS), chip.height, chip.width), np.float32)
    invalid = np.zeros(values.shape, bool)
    grid = scene.transform
    for k, band in enumerate(S2_BANDS):
        with rasterio.open(folder / f"{band}.tif") as src:
            t = src.transform
            x, y = grid @ (chip.col, chip.row)
            window = Window((x - t.c) / t.a, (y - t.f) / t.e, chip.width * grid.a / t.a, chip.height * grid.e / t.e)
            raw = src.read(1, window=window, out_shape=(chip.height, chip.width), resampling=method)
            invalid[k] = (raw == 0) | ((raw == src.nodata) if src.nodata is not None else False)
            values[k] = raw.astype(np.float32) - offset
    fraction = float(invalid.any(axis=0).mean())
    values = np.where(invalid, np.asarray(DEMO.band_means, np.float32)[:, None, None], values)
    padded = np.pad(values, ((0, 0), (0, size - chip.height), (0, size - chip.width)), mode="edge")
    return padded, fraction


def numpy_nearest(folder: Path, band: str, scene, chip) -> np.ndarray:
    """Nearest upsampling by index arithmetic alone: scene pixel (r, c) takes the 20 m pixel whose
    footprint holds its centre."""
    with rasterio.open(folder / f"{band}.tif") as src:
        data, t = src.read(1), src.transform
    grid = scene.transform
    rows = np.arange(chip.row, chip.row + chip.height) + 0.5
    cols = np.arange(chip.col, chip.col + chip.width) + 0.5
    src_rows = np.floor((grid.f + rows * grid.e - t.f) / t.e).astype(int)
    src_cols = np.floor((grid.c + cols * grid.a - t.c) / t.a).astype(int)
    return data[np.ix_(src_rows, src_cols)]


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_nearest_upsampling_equals_rasterio_nearest_read_exactly(tmp_path, edge):
    folder = s2_folder(tmp_path)
    scene = open_scene(folder, DEMO, NEAREST)
    assert all(s.conversion.identity for s in scene.sources)  # harmonised DNs, no offset declared: values as stored
    assert {s.band for s in scene.sources if s.mode == "repeat"} == set(TWENTY_M)
    chips = scene.chips(edge)
    # shift: edge chips start at odd pixels; pad: edge chips are cut short (and the 20 m grid's phase is odd anyway)
    assert any(c.col % 2 for c in chips) if edge == "shift" else any(c.height < scene.chip_size for c in chips)
    for chip in chips:
        ours, fraction = read_chip(scene, chip)
        expected, expected_fraction = rasterio_chip(folder, scene, chip, Resampling.nearest)
        assert np.array_equal(ours, expected), chip
        assert fraction == expected_fraction, chip
        for band in TWENTY_M[:2]:  # GDAL's nearest is the pixel holding each centre
            k = S2_BANDS.index(band)
            raw = numpy_nearest(folder, band, scene, chip)
            valid = raw != 0
            assert np.array_equal(ours[k, : chip.height, : chip.width][valid], raw[valid].astype(np.float32)), chip


def test_nearest_with_a_declared_offset_converts_every_band(tmp_path):
    """Baseline 04.00's BOA_ADD_OFFSET: the repeated bands are converted before their repetition, the
    others after; every value is DN − 1000 all the same."""
    folder = s2_folder(tmp_path, offset=1000)
    scene = open_scene(folder, DEMO, NEAREST)
    assert {s.conversion.bias for s in scene.sources} == {-1000.0}
    for chip in scene.chips():
        ours, fraction = read_chip(scene, chip)
        expected, expected_fraction = rasterio_chip(folder, scene, chip, Resampling.nearest, offset=1000)
        assert np.array_equal(ours, expected) and fraction == expected_fraction, chip


def test_nearest_keeps_a_declared_nodata_value_out_as_before(tmp_path):
    folder = s2_folder(tmp_path, nodata=65535)
    scene = open_scene(folder, DEMO, NEAREST)
    assert {s.band for s in scene.sources if s.mode == "repeat"} == set(TWENTY_M)
    assert scene.applied["invalid_pixels"]["nodata value 65535; 0 (L2A NO_DATA)"] == list(TWENTY_M)
    seen = 0
    for chip in scene.chips():
        ours, fraction = read_chip(scene, chip)
        expected, expected_fraction = rasterio_chip(folder, scene, chip, Resampling.nearest)
        assert np.array_equal(ours, expected) and fraction == expected_fraction, chip
        seen += int(fraction > 0)
    assert seen and ours.max() < 12000  # holes were met, and no 65535 got through


def test_nearest_on_a_non_integer_ratio_is_gdal_nearest_resampled_window(tmp_path):
    """25 m pixels: 2.5 scene pixels each, no repetition; GDAL's nearest resampled window, exactly."""
    folder = s2_folder(tmp_path, size=(300, 300), coarse_px=25.0, shift=(0, 0))
    scene = open_scene(folder, DEMO, NEAREST)
    assert {s.band for s in scene.sources if s.mode == "resample"} == set(TWENTY_M)
    assert scene.applied["resampling"]["resampled nearest"] == list(TWENTY_M)
    for chip in scene.chips():
        ours, fraction = read_chip(scene, chip)
        expected, expected_fraction = rasterio_chip(folder, scene, chip, Resampling.nearest)
        assert np.array_equal(ours, expected) and fraction == expected_fraction, chip


def test_bilinear_reads_as_today(tmp_path):
    """``--resampling bilinear`` (and the demo engine, which records it) reads the 20 m bands by GDAL's
    bilinear resampled window where no nodata is near: the reader of before, exactly."""
    folder = s2_folder(tmp_path, holes=False)
    for options in (RunOptions(resampling="bilinear"), RunOptions()):
        scene = open_scene(folder, replace(DEMO, resampling="nearest") if options.resampling else DEMO, options)
        assert scene.resampling == "bilinear" and {s.mode for s in scene.sources} == {"direct", "resample"}
        for chip in scene.chips():
            ours, _ = read_chip(scene, chip)
            expected, _ = rasterio_chip(folder, scene, chip, Resampling.bilinear)
            assert np.array_equal(ours, expected), chip


def test_the_choice_and_why():
    assert choose_resampling("nearest", None)[0] == "nearest" and "engine's metadata" in choose_resampling("nearest", None)[1]
    method, why = choose_resampling(None, None)
    assert method == "bilinear" and "does not record" in why
    method, why = choose_resampling("nearest", "bilinear")
    assert method == "bilinear" and why.startswith("--resampling bilinear") and "the engine's nearest" in why
    assert DEMO.resampling == "bilinear"  # the bundled demo weights were trained through the bilinear reader


def test_metadata_round_trips_and_refuses_what_it_cannot_read():
    record = DEMO.to_dict()
    assert EngineMetadata.from_dict(record).resampling == "bilinear"
    assert EngineMetadata.from_dict({k: v for k, v in record.items() if k != "resampling"}).resampling is None
    with pytest.raises(MetadataError, match="resampling must be one of nearest, bilinear, not 'cubic'"):
        EngineMetadata.from_dict({**record, "resampling": "cubic"})
    with pytest.raises(ValueError, match="resampling must be one of"):
        RunOptions(resampling="cubic")


def test_export_records_what_the_weights_saw(tmp_path):
    pytest.importorskip("torch")
    from clay.export.artifacts import trained_resampling

    assert trained_resampling({"state_dict": {}, "hyper_parameters": {"size": "tiny"}})[0] == "nearest"  # Clay v0's layout
    assert trained_resampling({"hyper_parameters": {"size": "tiny", "groups": ["rgb"]}})[0] == "bilinear"  # demo, clay-train
    assert trained_resampling({"hyper_parameters": {"groups": None, "resampling": "nearest"}})[0] == "nearest"
    assert trained_resampling({}, "bilinear") == ("bilinear", "--resampling")
    assert trained_resampling(None)[0] == "nearest"  # random weights: as Clay v0


def engine_with(path: Path, resampling: str | None) -> Path:
    """A copy of the demo engine whose metadata records ``resampling`` (``None``: no such field, as
    engines exported before it)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEMO_ENGINE))
    props = [p for p in model.metadata_props if p.key != "resampling"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if resampling is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "resampling", json.dumps(resampling)
    onnx.save(model, str(path))
    return path


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


def test_clay_run_applies_says_and_records_the_resampling(tmp_path):
    """The demo scene with engines that record nearest, bilinear or nothing: the outputs' metadata
    (GeoParquet and the patch raster's tags) name the method and why; ``--resampling bilinear`` on a
    nearest engine gives exactly the embeddings the bilinear engine and an engine of before give."""
    runs = {
        "old": (engine_with(tmp_path / "old.onnx", None), ()),
        "bilinear": (engine_with(tmp_path / "bilinear.onnx", "bilinear"), ()),
        "nearest": (engine_with(tmp_path / "nearest.onnx", "nearest"), ()),
        "override": (tmp_path / "nearest.onnx", ("--resampling", "bilinear")),
    }
    embeddings, notes = {}, {}
    for name, (engine, flags) in runs.items():
        out = tmp_path / f"{name}.parquet"
        result = clay_run(DEMO_SCENE, "--engine", engine, "--out", out, "--patch-raster", *flags)
        assert result.returncode == 0, result.stderr
        assert "; resampling: " in next(line for line in result.stderr.splitlines() if line.startswith("clay-run: engine "))
        table = pq.read_table(out)
        embeddings[name] = np.stack(table["embeddings"].to_numpy(zero_copy_only=False))
        notes[name] = json.loads(table.schema.metadata[b"clay:preprocessing"])["resampling"]
        with rasterio.open(tmp_path / f"{name}.patches.tif") as raster:
            assert json.loads(raster.tags()["CLAY_PREPROCESSING"])["resampling"] == notes[name]
    assert notes["old"]["method"] == "bilinear" and "does not record" in notes["old"]["chosen_by"]
    assert notes["bilinear"]["method"] == "bilinear" and notes["bilinear"]["resampled bilinear"] == list(TWENTY_M)
    assert notes["nearest"]["method"] == "nearest"
    assert notes["nearest"]["resampled nearest (native pixels repeated 2×2)"] == list(TWENTY_M)
    assert notes["override"]["method"] == "bilinear" and notes["override"]["chosen_by"].startswith("--resampling bilinear")
    assert np.array_equal(embeddings["override"], embeddings["bilinear"])
    assert np.array_equal(embeddings["old"], embeddings["bilinear"])
    assert not np.array_equal(embeddings["nearest"], embeddings["bilinear"])  # the method reaches the engine


def test_nearest_from_a_20m_stack_whose_bands_are_not_consecutive_in_the_engine(tmp_path):
    """A 10 m stack (B02 B03 B04 B08) and a 20 m stack (B05 B06 B07 B8A B11 B12): B08 sits between B07
    and B8A in the engine's order, so the 20 m group is written band by band; same values as
    rasterio's nearest resampled windows of each band."""
    rng = np.random.default_rng(3)
    fine = rng.integers(1, 12000, (4, 700, 650)).astype(np.uint16)
    coarse = rng.integers(0, 12000, (6, 352, 327)).astype(np.uint16)  # zeros: L2A NO_DATA here and there
    write_stack(tmp_path / "R10m.tif", fine, Affine(10, 0, 600000, 0, -10, 5000000), "EPSG:32633", TEN_M,
                tags={"date": "2021-06-01"})  # fmt: skip
    write_stack(tmp_path / "R20m.tif", coarse, Affine(20, 0, 600000 - 10, 0, -20, 5000000 + 30), "EPSG:32633", TWENTY_M,
                tags={"date": "2021-06-01"})  # fmt: skip
    from clay.runtime.scenes.inputs import SceneFiles

    scene = open_scene(SceneFiles(tmp_path, (tmp_path / "R10m.tif", tmp_path / "R20m.tif")), DEMO, NEAREST)
    (group,) = [g for g in scene.read_groups if g.mode == "repeat"]
    assert group.positions == (3, 4, 5, 7, 8, 9)
    for chip in scene.chips():
        ours, fraction = read_chip(scene, chip)
        values = np.empty((10, chip.height, chip.width), np.float32)
        for name, fine_or_coarse in (("R10m.tif", TEN_M), ("R20m.tif", TWENTY_M)):
            with rasterio.open(tmp_path / name) as src:
                t, grid = src.transform, scene.transform
                x, y = grid @ (chip.col, chip.row)
                window = Window((x - t.c) / t.a, (y - t.f) / t.e, chip.width * grid.a / t.a, chip.height * grid.e / t.e)
                raw = src.read(window=window, out_shape=(len(fine_or_coarse), chip.height, chip.width),
                               resampling=Resampling.nearest)  # fmt: skip
            for band, plane in zip(fine_or_coarse, raw):
                values[S2_BANDS.index(band)] = plane
        invalid = values == 0
        assert fraction == float(invalid.any(axis=0).mean()), chip
        expected = np.where(invalid, np.asarray(DEMO.band_means, np.float32)[:, None, None], values)
        expected = np.pad(expected, ((0, 0), (0, 512 - chip.height), (0, 512 - chip.width)), mode="edge")
        assert np.array_equal(ours, expected), chip


def test_a_warped_band_is_warped_by_the_same_method(tmp_path):
    """B11 in a neighbouring UTM zone goes through GDAL's warper: with nearest, every value it gives
    is one the file stores (bilinear makes new ones), and the outputs say "warped nearest"."""
    from pyproj import Transformer

    folder = s2_folder(tmp_path, size=(300, 300), holes=False)
    with rasterio.open(folder / "B11.tif") as src:
        left, top = Transformer.from_crs("EPSG:32633", "EPSG:32634", always_xy=True).transform(src.bounds.left - 500,
                                                                                            src.bounds.top + 500)  # fmt: skip
    stored = np.random.default_rng(7).integers(1, 12000, (400, 400)).astype(np.uint16)  # 8 km: covers the scene
    write_stack(folder / "B11.tif", stored[None], Affine(20, 0, left - 1500, 0, -20, top + 1500), "EPSG:32634", [None],
                tags={"date": "2021-06-01"})  # fmt: skip
    k = S2_BANDS.index("B11")
    for method in ("nearest", "bilinear"):
        scene = open_scene(folder, DEMO, RunOptions(resampling=method))
        assert scene.applied["resampling"][f"warped {method}"] == ["B11"]
        values, fraction = read_chip(scene, scene.chips()[0])
        assert fraction == 0.0
        new = ~np.isin(values[k], stored.astype(np.float32))
        assert not new.any() if method == "nearest" else new.mean() > 0.5, method



@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_lone_non_finite_float_value_is_invalid_and_huge_finite_ones_are_kept(tmp_path, bad):
    """A float32 scene whose chip holds one non-finite value (alone, so the reader's cheap first
    test, on each band's minimum and the group's maximum, must see it by itself) and a finite 3e38."""
    from clay.training.synthetic import write_scene

    path = write_scene(tmp_path / "float.tif", 600, 600, bands=S2_BANDS, seed=5)
    with rasterio.open(path, "r+") as dst:
        cube = dst.read()
        cube[S2_BANDS.index("B08"), 300, 7] = bad
        cube[S2_BANDS.index("B03"), 44, 55] = 3e38
        dst.write(cube)
    scene = open_scene(path, DEMO)
    (chip,) = [c for c in scene.chips() if c.row == 0 and c.col == 0]
    ours, fraction = read_chip(scene, chip)
    window = cube[:, : chip.height, : chip.width]
    invalid = ~np.isfinite(window) | (window == 0)
    assert invalid.sum() == 1  # the one value
    assert fraction == float(invalid.any(axis=0).mean())
    expected = np.where(invalid, scene.fill_values[:, None, None], window)
    assert np.array_equal(ours[:, : chip.height, : chip.width], expected)
    assert ours[S2_BANDS.index("B03"), 44, 55] == np.float32(3e38)
