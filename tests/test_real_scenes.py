"""Real data as users have it: per-band files at 10/20/60 m, S1 in dB on another grid, band subsets.

The T48QUE scene is the bundled demo copy (Major TOM Core-S2L2A, CC-BY-SA-4.0, "Contains modified
Copernicus Sentinel data (2020), Major TOM Core-S2L2A, ESA Φ-lab"); the SSL4EO-S12 pair is a crop
shipped under ``tests/data/real`` (CC-BY-4.0, "SSL4EO-S12, contains modified Copernicus Sentinel
data (2020)"; see its NOTICE.md). Copies made here live only in pytest's temporary folders.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.demo import DEMO_SCENE
from rasterio.enums import Resampling
from rasterio.warp import reproject
from shapely import from_wkb

from .conftest import SSL4EO, trained_like_tiny

torch = pytest.importorskip("torch", reason="engines are exported with the [export] extra")

T48QUE = DEMO_SCENE
S2_GROUPS = ("rgb", "rededge", "nir", "swir")
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def export(checkpoint: Path, out: Path, groups, **flags) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=tuple(groups), **flags), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def s2_engine(checkpoint, tmp_path_factory) -> Path:
    return export(checkpoint, tmp_path_factory.mktemp("s2"), S2_GROUPS, fp16=True, int8_cpu=True)


@pytest.fixture(scope="module")
def s2_s1_engine(checkpoint, tmp_path_factory) -> Path:
    return export(checkpoint, tmp_path_factory.mktemp("s2s1"), (*S2_GROUPS, "sar")) / "clay.onnx"


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def footprint_wgs84(path: Path):
    from pyproj import Transformer
    from shapely.geometry import box

    with rasterio.open(path) as src:
        b, crs = src.bounds, src.crs
    xs, ys = np.meshgrid(np.linspace(b.left, b.right, 40), np.linspace(b.bottom, b.top, 40))
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs.ravel(), ys.ravel())
    return box(min(lon), min(lat), max(lon), max(lat)).buffer(1e-7)


def test_subset_engine_meets_fp16_and_int8_bounds(s2_engine):
    from clay.export import check
    from clay.export.onnx_export import read_metadata
    from clay.runtime.formats import format_named

    assert read_metadata(s2_engine / "clay.fp16.onnx").bands == S2_BANDS
    feeds = check.check_feeds(S2_GROUPS, count=2)
    expected = check.eager_reference(trained_like_tiny().encoder, S2_GROUPS, feeds, False)
    for fmt in (format_named("fp16"), format_named("int8")):
        scores = check.check_artifact(s2_engine / fmt.file_name, fmt, feeds, expected)
        assert all(s.passed for s in scores), [s.line() for s in scores]


def test_sar_only_engine_keeps_band_group_index_4(checkpoint, tmp_path):
    """Would fail if the subset were re-indexed from 0: the ONNX output must match an eager pass that
    uses encoding row 4, and differ clearly from one that uses row 0."""
    import onnxruntime as ort
    from clay.training.model import normalise
    from clay.training.synthetic import make_chips

    engine = export(checkpoint, tmp_path, ("sar",)) / "clay.onnx"
    pixels, lonlat, date = make_chips(1, seed=21)
    sar = pixels[:, 10:12]
    (onnx_out,) = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": sar, "lonlat": lonlat, "date": date}
    )
    encoder = trained_like_tiny().encoder
    args = (normalise(torch.from_numpy(sar), (10, 11)), torch.from_numpy(lonlat), torch.from_numpy(date), ("sar",))
    with torch.no_grad():
        right, _ = encoder.embed(*args)
        encoder.band_encoding[4] = encoder.band_encoding[0]  # what a re-indexed subset would add
        wrong, _ = encoder.embed(*args)
    assert np.abs(onnx_out - right.numpy()).max() < 1e-4
    assert np.abs(onnx_out - wrong.numpy()).max() > 1e-2


def test_s2_per_band_folder_runs_on_an_s2_engine(s2_engine, tmp_path):
    out = tmp_path / "t48que.parquet"
    result = clay_run(T48QUE, "--engine", s2_engine / "clay.onnx", "--date", "2020-02-23", "--out", out)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 9  # 1068² px with shifted edge chips: 3 × 3
    assert np.isfinite(np.stack(table["embeddings"].to_numpy(zero_copy_only=False))).all()
    footprint = footprint_wgs84(T48QUE / "B02.tif")
    assert all(footprint.contains(from_wkb(g)) for g in table["geometry"].to_pylist())
    resampling = json.loads(table.schema.metadata[b"clay:preprocessing"])["resampling"]
    # A checkpoint in the published layout that records no groups is taken for Clay v0: nearest.
    assert json.loads(table.schema.metadata[b"clay:engine"])["resampling"] == resampling["method"] == "nearest"
    assert resampling["resampled nearest (native pixels repeated 2×2)"] == ["B05", "B06", "B07", "B8A", "B11", "B12"]


def test_ssl4eo_s2_and_s1_in_db_on_another_grid(s2_s1_engine, tmp_path):
    out = tmp_path / "ssl4eo.parquet"
    refused = clay_run(SSL4EO, "--engine", s2_s1_engine, "--date", "2020-06-04", "--out", out)
    assert refused.returncode != 0 and "mostly negative" in refused.stderr and "--sar-units db" in refused.stderr
    assert not out.exists()
    as_linear = clay_run(SSL4EO, "--engine", s2_s1_engine, "--date", "2020-06-04", "--out", out, "--sar-units", "linear")
    assert as_linear.returncode != 0 and "mostly negative" in as_linear.stderr
    result = clay_run(SSL4EO, "--engine", s2_s1_engine, "--date", "2020-06-04", "--out", out, "--sar-units", "db")
    assert result.returncode == 0, result.stderr
    assert "geographic CRS EPSG:4326" in result.stderr  # GSD warning
    table = pq.read_table(out)
    assert table.num_rows == 1  # 128² px: smaller than a chip, padded
    assert np.isfinite(np.array(table["embeddings"][0].as_py())).all()
    assert footprint_wgs84(SSL4EO / "s2l2a-20200604" / "B2.tif").contains(from_wkb(table["geometry"][0].as_py()))
    assert json.loads(table.schema.metadata[b"clay:preprocessing"])["units"]["--sar-units db: dB to linear power"] == ["VH", "VV"]


def test_stacked_copy_gives_the_same_embeddings_as_per_band_files(s2_engine, tmp_path):
    with rasterio.open(T48QUE / "B02.tif") as ref:
        profile = ref.profile | {"count": 10, "dtype": "uint16", "compress": "deflate", "tiled": True,
                                 "blockxsize": 256, "blockysize": 256}  # fmt: skip
        stacked = tmp_path / "stacked.tif"
        with rasterio.open(stacked, "w", **profile) as dst:
            for i, band in enumerate(S2_BANDS, start=1):
                with rasterio.open(T48QUE / f"{band}.tif") as src:
                    grid = np.zeros((ref.height, ref.width), np.uint16)
                    reproject(rasterio.band(src, 1), grid, dst_transform=ref.transform, dst_crs=ref.crs,
                              resampling=Resampling.bilinear)  # fmt: skip
                dst.write(grid, i)
                dst.set_band_description(i, band)
            dst.update_tags(date="2020-02-23")
    engine = s2_engine / "clay.onnx"
    assert clay_run(stacked, "--engine", engine, "--out", tmp_path / "a.parquet").returncode == 0
    assert clay_run(T48QUE, "--engine", engine, "--date", "2020-02-23", "--out", tmp_path / "b.parquet").returncode == 0
    a = np.stack(pq.read_table(tmp_path / "a.parquet")["embeddings"].to_numpy(zero_copy_only=False))
    b = np.stack(pq.read_table(tmp_path / "b.parquet")["embeddings"].to_numpy(zero_copy_only=False))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999


def test_missing_band_names_the_groups_that_would_fit(s2_s1_engine, tmp_path):
    result = clay_run(T48QUE, "--engine", s2_s1_engine, "--date", "2020-02-23", "--out", tmp_path / "x.parquet")
    assert result.returncode != 0
    assert "lacks band(s) VH, VV" in result.stderr and "--groups rgb,rededge,nir,swir" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.parquet").exists()


def copy_s2_bands(folder: Path) -> Path:
    """A writable copy of the T48QUE per-band files, for tests that break it on purpose."""
    folder.mkdir()
    for band in S2_BANDS:
        shutil.copy(T48QUE / f"{band}.tif", folder / f"{band}.tif")
    return folder


def test_per_band_files_that_do_not_overlap_are_refused(s2_engine, tmp_path):
    folder = copy_s2_bands(tmp_path / "scene")
    with rasterio.open(folder / "B11.tif", "r+") as dst:  # move one band 100 km east
        dst.transform = dst.transform * dst.transform.translation(100_000 / dst.transform.a, 0)
    result = clay_run(folder, "--engine", s2_engine / "clay.onnx", "--date", "2020-02-23", "--out", tmp_path / "o.parquet")
    assert result.returncode != 0 and "B11.tif" in result.stderr and "do not overlap" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.parquet").exists()


def test_two_files_claiming_the_same_band_are_refused(s2_engine, tmp_path):
    folder = copy_s2_bands(tmp_path / "scene")
    shutil.copy(T48QUE / "B02.tif", folder / "B2.tif")
    result = clay_run(folder, "--engine", s2_engine / "clay.onnx", "--date", "2020-02-23", "--out", tmp_path / "o.parquet")
    assert result.returncode != 0 and "two bands claim B02" in result.stderr
    (folder / "B2.tif").unlink()
    (folder / "copy").mkdir()
    shutil.copy(T48QUE / "B02.tif", folder / "copy" / "B02.tif")  # one name twice: the message tells them apart
    result = clay_run(folder, "--engine", s2_engine / "clay.onnx", "--date", "2020-02-23", "--out", tmp_path / "o.parquet")
    assert result.returncode != 0 and "two bands claim B02: B02.tif and copy/B02.tif" in result.stderr
    assert "Traceback" not in result.stderr


def test_s2_offset_is_removed_in_the_read_and_recorded(s2_engine, tmp_path):
    out = tmp_path / "o.parquet"
    result = clay_run(T48QUE, "--engine", s2_engine / "clay.onnx", "--date", "2020-02-23", "--out", out, "--s2-offset", "1000")
    assert result.returncode == 0, result.stderr
    units = json.loads(pq.read_table(out).schema.metadata[b"clay:preprocessing"])["units"]
    assert units == {"--s2-offset 1000: DN - 1000": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]}
