"""clay-run and the Python API: scenes to GeoParquet, equal to eager PyTorch, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime import ClayEmbedder, RunOptions
from clay.runtime.bands import GROUP_NAMES, S2_BANDS
from pyproj import Transformer
from shapely import from_wkb
from shapely.geometry import box

S2_GROUPS = ("rgb", "rededge", "nir", "swir")
from clay.training.synthetic import write_scene

from .conftest import trained_like_tiny

torch = pytest.importorskip("torch", reason="the engines under test are exported with the [export] extra")


@pytest.fixture(scope="module")
def engine(checkpoint, tmp_path_factory) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("engine")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=GROUP_NAMES, patch_embeddings=True),
                     log=lambda _: None)  # fmt: skip
    return out / "clay.onnx"


@pytest.fixture(scope="module")
def s2_engine(checkpoint, tmp_path_factory) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("s2engine")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=S2_GROUPS), log=lambda _: None)
    return out / "clay.onnx"


def clay_run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)  # fmt: skip


def eager_chip(path: Path, row: int, col: int, lonlat, groups=GROUP_NAMES) -> np.ndarray:
    from clay.runtime.bands import bands_of_groups
    from clay.training.model import normalise

    with rasterio.open(path) as src:
        pixels = src.read(window=rasterio.windows.Window(col, row, 512, 512), out_dtype="float32")[None]
        day = [float(v) for v in src.tags()["date"].split("-")]
    model = trained_like_tiny()
    cube = normalise(torch.from_numpy(pixels), bands_of_groups(groups))
    with torch.no_grad():
        chip, _ = model.encoder.embed(cube, torch.tensor([lonlat]), torch.tensor([day]), groups)
    return chip[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def scene_footprint_wgs84(path: Path):
    with rasterio.open(path) as src:
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        b = src.bounds
    xs, ys = np.meshgrid(np.linspace(b.left, b.right, 50), np.linspace(b.bottom, b.top, 50))
    lon, lat = to_wgs84.transform(xs.ravel(), ys.ravel())
    return box(min(lon), min(lat), max(lon), max(lat))


def test_scene_embeddings_equal_eager_and_geometries_lie_inside(engine, tmp_path):
    scene = write_scene(tmp_path / "scene.tif", 1300, 900, seed=3, nodata_fraction=0.05)
    out = tmp_path / "out.parquet"
    result = clay_run(scene, "--engine", engine, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "chips/s" in result.stdout
    table = pq.read_table(out)
    assert table.num_rows == 3 * 2  # shifted edge chips: cols 0, 512, 788; rows 0, 388
    assert sorted(set(table["col"].to_pylist())) == [0, 512, 788]
    assert sorted(set(table["row"].to_pylist())) == [0, 388]
    assert table.schema.field("embeddings").type.list_size == 256
    footprint = scene_footprint_wgs84(scene)
    for row in table.to_pylist():
        polygon = from_wkb(row["geometry"])
        assert footprint.buffer(1e-9).contains(polygon)
        if row["nodata_fraction"] == 0:
            lonlat = [polygon.centroid.x, polygon.centroid.y]
            expected = eager_chip(scene, row["row"], row["col"], lonlat)
            assert cosine(np.array(row["embeddings"]), expected) >= 0.99999
    assert (np.array(table["nodata_fraction"]) > 0).any()


def test_uint16_s2_scene_runs_on_an_s2_engine_and_equals_eager(engine, s2_engine, tmp_path):
    scene = write_scene(tmp_path / "s2.tif", 1300, 900, dtype="uint16", bands=S2_BANDS, nodata_fraction=0.05)
    result = clay_run(scene, "--engine", engine, "--out", tmp_path / "o.parquet")  # 13-band engine: refused
    assert result.returncode != 0
    assert "lacks band(s) VH, VV, DEM" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.parquet").exists()
    result = clay_run(scene, "--engine", s2_engine, "--out", tmp_path / "o.parquet")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.num_rows == 6 and (np.array(table["nodata_fraction"]) > 0).any()
    for row in table.to_pylist():
        if row["nodata_fraction"] == 0:
            centre = from_wkb(row["geometry"]).centroid
            expected = eager_chip(scene, row["row"], row["col"], [centre.x, centre.y], S2_GROUPS)
            assert cosine(np.array(row["embeddings"]), expected) >= 0.99999


def test_small_scene_is_padded_and_geoparquet_opens_in_geopandas(engine, tmp_path):
    gpd = pytest.importorskip("geopandas")
    scene = write_scene(tmp_path / "small.tif", 300, 300, seed=5)
    out = tmp_path / "small.parquet"
    assert clay_run(scene, "--engine", engine, "--out", out, "--patch-embeddings").returncode == 0
    frame = gpd.read_parquet(out)
    assert len(frame) == 1 and frame.crs.to_epsg() == 4326 or frame.crs.to_string() == "OGC:CRS84"
    assert scene_footprint_wgs84(scene).buffer(1e-9).contains(frame.geometry.iloc[0])
    patches = gpd.read_parquet(tmp_path / "small.patches.parquet")
    assert len(patches) == 10 * 10  # ceil(300 / 32) cells per side hold real pixels
    assert np.isfinite(np.stack(patches["embeddings"].to_numpy())).all()


@pytest.mark.parametrize(("edge", "count"), [("shift", 6), ("pad", 6), ("drop", 2)])
def test_edge_modes_cover_right_and_bottom_remainders(engine, tmp_path, edge, count):
    scene = write_scene(tmp_path / "s.tif", 1300, 900, seed=6)
    embedder = ClayEmbedder(engine)
    table = embedder.embed_scene(scene, options=RunOptions(edge=edge))
    assert table.num_rows == count


def test_chips_above_max_nodata_are_skipped_and_counted(engine, tmp_path):
    scene = write_scene(tmp_path / "holes.tif", 1024, 1024, seed=7, nodata_fraction=0.3)  # bottom-right chip all NaN
    result = clay_run(scene, "--engine", engine, "--out", tmp_path / "h.parquet")
    assert result.returncode == 0, result.stderr
    assert "3 chips, 1 skipped" in result.stderr
    assert pq.read_table(tmp_path / "h.parquet").num_rows == 3


def test_scenes_in_two_utm_zones_in_one_run(engine, tmp_path):
    a = write_scene(tmp_path / "a.tif", 512, 512, crs="EPSG:32648", seed=1)
    b = write_scene(tmp_path / "b.tif", 512, 512, crs="EPSG:32633", origin=(500000, 4650000), seed=2)
    out = tmp_path / "both"
    result = clay_run(a, b, "--engine", engine, "--out", out)
    assert result.returncode == 0, result.stderr
    lon_a = from_wkb(pq.read_table(out / "a.parquet")["geometry"][0].as_py()).centroid.x
    lon_b = from_wkb(pq.read_table(out / "b.parquet")["geometry"][0].as_py()).centroid.x
    assert 102 < lon_a < 106 and 14 < lon_b < 16


def test_api_embeds_arrays_and_refuses_wrong_shapes(engine):
    embedder = ClayEmbedder(engine)
    from clay.training.synthetic import make_chips

    pixels, lonlat, date = make_chips(2, seed=9)
    vectors = embedder.embed(pixels, lonlat, date)
    assert vectors.shape == (2, 256) and vectors.dtype == np.float32
    with pytest.raises(ValueError, match=r"pixels must be \[B, 13, 512, 512\]"):
        embedder.embed(pixels[:, :12], lonlat, date)
    for bad in (np.nan, np.inf):
        holed = pixels.copy()
        holed[1, 3, 100, 200] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            embedder.embed(holed, lonlat, date)
    huge = np.full_like(pixels, 3e38)  # finite, though their float32 sum overflows: still accepted
    assert embedder.embed(huge, lonlat, date).shape == (2, 256)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_scene(p, 600, 600, band_count=12, band_descriptions=False), "12 bands without band descriptions"),
        (lambda p: write_scene(p, 600, 600, with_crs=False), "no CRS; the runtime needs one"),
        (lambda p: _ungeoreferenced_scene(p), "no CRS and no geotransform; the runtime needs both"),
        (lambda p: write_scene(p, 600, 600, with_date_tag=False), "no acquisition date"),
        (lambda p: write_scene(p, 600, 600, nodata_fraction=1.0), "every chip has more than 50% nodata"),
        (lambda p: p.write_bytes(b"II*\x00garbage"), "not a readable GeoTIFF"),
        (lambda p: _uint8_scene(p), "unsupported data type uint8"),
        (lambda p: _truncated_scene(p), "bad.tif"),
    ],
)
def test_bad_scenes_are_one_line_and_leave_no_file(engine, tmp_path, make, message):
    scene = tmp_path / "bad.tif"
    make(scene)
    result = clay_run(scene, "--engine", engine, "--out", tmp_path / "out")
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "bad.tif" in result.stderr.strip().splitlines()[-1]
    assert not any((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def _ungeoreferenced_scene(path: Path) -> None:
    """Neither CRS nor geotransform (rasterio warns, two lines, when such a file is opened)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=13, dtype="float32") as dst:
            dst.write(np.ones((13, 600, 600), np.float32))


def _truncated_scene(path: Path) -> None:
    """A scene cut off half-way, as an interrupted download leaves it."""
    write_scene(path, 1100, 1100, seed=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _uint8_scene(path: Path) -> None:
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 13, "dtype": "uint8", "crs": "EPSG:32648",
               "transform": rasterio.transform.from_origin(0, 0, 10, 10)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((13, 600, 600), np.uint8))
        dst.update_tags(date="2020-01-01")


def test_bad_engines_and_outputs_are_one_line(engine, tmp_path):
    scene = write_scene(tmp_path / "s.tif", 512, 512)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    result = clay_run(scene, "--engine", junk)
    assert result.returncode != 0 and "junk.onnx" in result.stderr and "Traceback" not in result.stderr
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = clay_run(scene, "--engine", engine, "--out", blocker / "dir")
    assert result.returncode != 0 and "not writable" in result.stderr and "Traceback" not in result.stderr
    result = clay_run(scene, "--engine", engine, "--out", blocker)  # an existing file is no output folder
    assert result.returncode != 0 and "names an existing file" in result.stderr and blocker.read_text() == ""
    result = clay_run(scene, "--engine", engine, "--date", "23/02/2020")
    assert result.returncode != 0 and "expected YYYY-MM-DD" in result.stderr



def test_an_error_is_reported_by_its_first_line_even_without_a_message():
    """Every one-line message (scene, engine, checkpoint, server) quotes errors through this helper."""
    from clay.runtime.errors import first_line

    assert first_line(ValueError("  bad input\ntraceback detail\n")) == "bad input"
    assert first_line(RuntimeError()) == "RuntimeError"  # an empty message still says something
    try:
        try:
            raise OSError("GDAL: block 3 is truncated")
        except OSError as cause:
            raise RuntimeError("Read failed. See previous exception for details.") from cause
    except RuntimeError as wrapped:
        assert first_line(wrapped) == "GDAL: block 3 is truncated"

def test_killed_run_leaves_no_finished_looking_file_and_resume_continues(engine, tmp_path):
    first = write_scene(tmp_path / "first.tif", 512, 512, seed=1)
    big = write_scene(tmp_path / "big.tif", 2560, 2560, seed=2)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "clay.runtime.cli", str(first), str(big), "--engine", str(engine),
                                "--out", str(out), "--batch", "1"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "big.parquet.partial").exists():
        time.sleep(0.2)
    assert (out / "big.parquet.partial").exists()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "first.parquet").exists() and not (out / "big.parquet").exists()
    result = clay_run(first, big, "--engine", engine, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert "first: " in result.stderr and "skipped (--resume)" in result.stderr
    assert pq.read_table(out / "big.parquet").num_rows == 25


def test_runtime_does_not_import_torch(engine, tmp_path):
    scene = write_scene(tmp_path / "s.tif", 600, 600)
    code = (
        "import sys\n"
        "from clay.runtime import ClayEmbedder\n"
        f"table = ClayEmbedder({str(engine)!r}).embed_scene({str(scene)!r})\n"
        "assert table.num_rows == 4, table.num_rows\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_coarser_bands_off_the_grid_by_a_fraction_of_a_pixel_read_as_the_warp_would(tmp_path):
    """20 m files whose origin is 7.5 m off the 10 m grid: the resampled window is fractional."""
    from dataclasses import replace

    from clay.runtime.demo import DEMO_ENGINE
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.scenes.inputs import SceneFiles
    from clay.runtime.scenes.reader import read_chip
    from clay.runtime.scenes.scene import open_scene
    from rasterio.transform import from_origin

    rows, cols = np.mgrid[0:700, 0:700]
    for band in S2_BANDS:
        coarse = band not in ("B02", "B03", "B04", "B08")
        size, shift = (360, 7.5) if coarse else (700, 0.0)
        data = (1000 + 500 * np.sin(cols[:size, :size] / 7) + 300 * np.cos(rows[:size, :size] / 5)).astype("uint16")
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": "EPSG:32648",
                   "transform": from_origin(500000 - shift, 2000000 + shift, 20 if coarse else 10, 20 if coarse else 10)}  # fmt: skip
        with rasterio.open(tmp_path / f"{band}.tif", "w", **profile) as dst:
            dst.write(data, 1)
            dst.update_tags(date="2020-01-01")
    scene = open_scene(SceneFiles(tmp_path, tuple(sorted(tmp_path.glob("*.tif")))), read_engine_metadata(DEMO_ENGINE))
    assert sum(s.source_transform is not None for s in scene.sources) == 6
    warped = replace(scene, sources=tuple(replace(s, mode="warp" if s.mode == "resample" else s.mode, source_transform=None)
                                          for s in scene.sources))  # fmt: skip
    for chip in scene.chips():
        assert np.abs(read_chip(scene, chip)[0] - read_chip(warped, chip)[0]).max() <= 1.0
