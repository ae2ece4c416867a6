"""Another sensor's bands are never taken as Sentinel-2's (issue 32, item 4): a file's product, from
its name or its folders', decides what its band names mean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.scenes.products import HLS_S30_NOTE, product_of
from rasterio.transform import from_origin

LANDSAT = "LC08_L1TP_129048_20230501_20230509_02_T1"
HLS_DAY = "2024060T033701"  # 2024, day 60: 29 February


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def write_band(path: Path, value: int, pixel: float = 10.0, size: int = 540, dtype: str = "uint16", nodata=None,
               description: str | None = None, scale: float | None = None) -> Path:  # fmt: skip
    rng = np.random.default_rng(value)
    data = (value + rng.integers(0, 400, size=(size, size))).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype=dtype, nodata=nodata,
                       crs="EPSG:32648", transform=from_origin(362600, 1987080, pixel, pixel)) as dst:  # fmt: skip
        dst.write(data, 1)
        if description:
            dst.set_band_description(1, description)
        if scale is not None:
            dst.scales = (scale,)
    return path


def landsat_stack(path: Path) -> Path:
    """A Landsat 8 L1TP stack as users export it: bands B1…B11 described, 30 m."""
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=540, height=540, count=11, dtype="uint16", crs="EPSG:32648",
                       transform=from_origin(362600, 1987080, 30, 30)) as dst:  # fmt: skip
        dst.write(rng.integers(7000, 12000, size=(11, 540, 540), dtype=np.uint16))
        for k in range(1, 12):
            dst.set_band_description(k, f"B{k}")
    return path


@pytest.mark.parametrize(
    ("name", "kind", "refused"),
    [
        (f"{LANDSAT}.tif", "Landsat 8 Collection product", True),
        ("LC09_L2SP_129048_20230509_20230511_02_T1/B8.tif", "Landsat 9 Collection product", True),
        (f"HLS.L30.T48QUE.{HLS_DAY}.v2.0.B05.tif", "HLS L30 (Landsat) granule", True),
        (f"HLS.S30.T48QUE.{HLS_DAY}.v2.0.B05.tif", "HLS S30 (Sentinel-2) granule", False),
        ("MOD09GA.A2020054.h27v07.061.2020056034530.hdf.tif", "MODIS product", True),
        ("m_3807537_ne_18_060_20220511.tif", "NAIP image", True),
        ("S2B_MSIL1C_20200223T032659_N0209_R018_T48QUE_20200223T074331/B08.tif", "Sentinel-2 Level-1C product", True),
        ("S2B_MSIL2A_20200223T032659_N0214_R018_T48QUE_20200223T074331/B08.tif", None, False),
        ("T48QUE_20200223/B08.tif", None, False),
    ],
)
def test_products_are_recognised_from_file_and_folder_names(name, kind, refused):
    found = product_of(Path("/data") / name)
    assert (found.kind if found else None) == kind
    assert bool(found and found.refused) == refused


def test_a_landsat_stack_is_refused_with_any_engine_and_no_hint_leads_to_a_wrong_answer(checkpoint, tmp_path):
    """Before: 'lacks band(s) …; the band groups it has: rgb,nir (export an engine for them with
    clay-export --groups rgb,nir)', and that engine ran it, feeding B8 (panchromatic) as NIR."""
    pytest.importorskip("torch", reason="the rgb,nir engine is exported with the [export] extra")
    from clay.export.artifacts import ExportOptions, export_artifacts

    engine = tmp_path / "rgb-nir"
    export_artifacts(ExportOptions(out=engine, checkpoint=checkpoint, groups=("rgb", "nir"), check=False), log=lambda _: None)
    scene = landsat_stack(tmp_path / f"{LANDSAT}.tif")
    for used in (DEMO_ENGINE, engine):
        result = clay_run(scene, "--engine", used, "--out", tmp_path / "out")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert f"{LANDSAT}.tif: a Landsat 8 Collection product ({LANDSAT}.tif): its bands B1…B11 are Landsat's" in last
        assert "--groups" not in last
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_landsat_and_hls_l30_band_files_in_their_product_folders_are_refused(tmp_path):
    landsat = tmp_path / "LC09_L2SP_129048_20230509_20230511_02_T1"
    landsat.mkdir()
    for band in ("B2", "B3", "B4", "B8"):
        write_band(landsat / f"{band}.tif", 8000)
    l30 = tmp_path / "l30"
    l30.mkdir()
    for band in ("B02", "B03", "B04", "B05", "B06", "B07"):
        write_band(l30 / f"HLS.L30.T48QUE.{HLS_DAY}.v2.0.{band}.tif", 800, pixel=30, dtype="int16", nodata=-9999)
    for folder, kind in ((landsat, "Landsat 9 Collection product"), (l30, "HLS L30 (Landsat) granule")):
        result = clay_run(folder, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"a {kind}" in result.stderr.strip().splitlines()[-1]


def test_an_hls_s30_granule_is_taken_as_sentinel2_with_what_differs_recorded(tmp_path):
    """HLS S30 v2.0 as LP DAAC serves it: one COG per band named HLS.S30.<tile>.<day>.v2.0.<band>.tif,
    int16 reflectance × 10 000 with scale 0.0001 and nodata -9999, 30 m, no +1000 offset."""
    folder = tmp_path / "granule"
    folder.mkdir()
    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12", "Fmask")
    for k, band in enumerate(bands):
        write_band(folder / f"HLS.S30.T48QUE.{HLS_DAY}.v2.0.{band}.tif", 600 + 50 * k, pixel=30, dtype="int16",
                   nodata=-9999, scale=0.0001)  # fmt: skip
    result = clay_run(folder, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pq.read_table(tmp_path / "out" / "granule.parquet")
    assert str(table["date"][0].as_py()) == "2024-02-29"
    applied = json.loads(table.schema.metadata[b"clay:preprocessing"])
    assert applied["product"] == HLS_S30_NOTE
    assert all("offset already removed (HLS S30 v2.0 product)" in note for note in applied["units"]), applied["units"]
    ignored = {Path(p).name.rsplit(".", 2)[-2] for p in applied["ignored_files"]}
    assert ignored == {"B01", "B09", "B10", "Fmask"}
    # the values reach the engine as S2 DNs: int16 reflectance × 10 000 (scale 0.0001 → × 1), no offset
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.scenes.grid import Chip
    from clay.runtime.scenes.reader import read_chip
    from clay.runtime.scenes.scene import open_scene

    scene = open_scene(folder, read_engine_metadata(DEMO_ENGINE))
    pixels, _ = read_chip(scene, Chip(0, 0, 512, 512))
    with rasterio.open(folder / f"HLS.S30.T48QUE.{HLS_DAY}.v2.0.B02.tif") as src:
        raw = src.read(1, window=((0, 512), (0, 512))).astype(np.float32)
    np.testing.assert_allclose(pixels[0], raw, rtol=1e-6)


SAFE = "S2B_MSIL2A_20230601T033541_N0509_R060_T48QUE_20230601T071249.SAFE"
SAFE_STEM = "T48QUE_20230601T033541"
#: ESA's L2A layout: each band at its native resolution and ESA's coarser copies (R20m, R60m), with
#: the non-band images beside them. B08 has no 20 m copy; B01 and B09 are 60 m only.
SAFE_LAYOUT = {
    10: ("B02", "B03", "B04", "B08", "AOT", "WVP"),
    20: ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "AOT", "SCL"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"),
}
NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20}


def test_a_sentinel_2_safe_product_embeds_its_native_bands_and_ignores_esas_coarser_copies(tmp_path):
    """A SAFE product's IMG_DATA (JPEG 2000, ``T48QUE_…_B02_10m.jp2``): the scene is each Clay band at
    its native resolution; the 20 m and 60 m copies of the 10 m bands (other values here, so that
    taking one would show) are ignored. Equal to a folder of plain GeoTIFFs of the native bands
    under the same product name (the +1000 of baseline 05.09 removed alike), and dated by the name."""
    from clay.runtime import ClayEmbedder

    size = 528  # 10 m pixels: whole 20 m and 60 m pixels
    img = tmp_path / SAFE / "GRANULE" / "L2A_T48QUE_A032500_20230601T034500" / "IMG_DATA"
    plain = tmp_path / "plain" / SAFE
    plain.mkdir(parents=True)
    for metres, bands in SAFE_LAYOUT.items():
        (img / f"R{metres}m").mkdir(parents=True)
        for band in bands:
            value = 1000 + 37 * metres + 11 * len(band) + sum(map(ord, band))  # each copy its own values
            side = size * 10 // metres
            rng = np.random.default_rng(value)
            data = (1000 + value + rng.integers(0, 400, size=(1, side, side))).astype("uint16")
            profile = {"width": side, "height": side, "count": 1, "dtype": "uint16", "crs": "EPSG:32648",
                       "transform": from_origin(362600, 1987080, metres, metres)}  # fmt: skip
            with rasterio.open(img / f"R{metres}m" / f"{SAFE_STEM}_{band}_{metres}m.jp2", "w", driver="JP2OpenJPEG",
                               QUALITY=100, REVERSIBLE="YES", **profile) as dst:  # fmt: skip
                dst.write(data)
            if NATIVE.get(band) == metres:
                with rasterio.open(plain / f"{band}.tif", "w", driver="GTiff", **profile) as dst:
                    dst.write(data)
    with ClayEmbedder(DEMO_ENGINE) as embedder:
        scene = embedder.open_scene(str(tmp_path / SAFE))
        sources = {source.band: Path(str(source.path)).name for source in scene.sources}
        safe = embedder.embed_scene(str(tmp_path / SAFE))
        reference = embedder.embed_scene(str(plain))
    assert safe.num_rows == reference.num_rows > 0
    assert np.array_equal(np.stack(safe["embeddings"].to_numpy(zero_copy_only=False)),
                          np.stack(reference["embeddings"].to_numpy(zero_copy_only=False)))  # fmt: skip
    assert str(safe["date"][0].as_py()) == "2023-06-01" and len(scene.ignored) == 29 - 10
    assert sources["B02"] == f"{SAFE_STEM}_B02_10m.jp2" and sources["B05"] == f"{SAFE_STEM}_B05_20m.jp2"
