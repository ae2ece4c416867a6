"""Clay v1.5 scenes of every sensor (issue 37): each scene built as its product's files are, embedded by
``clay-run`` with one tiny v1.5 engine folder of several sensors, against the official encoder on chips
prepared here (rasterio + numpy + metadata.yaml's constants copied below + v1.5's training conventions:
stored values, nearest-repeated coarser bands, the sensor's gsd), not through the runtime's reader.

One engine folder is exported once for the module (fp32 only, unchecked: the comparison below is the
check), with Sentinel-2 L2A, its B02+B03+B04+B08 subset, Landsat C2 L2 SR, NAIP and Sentinel-1 RTC.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [export] extra")
pytest.importorskip("onnx", reason="export tests need the [export] extra")
pytest.importorskip("onnxruntime")

import pyarrow.parquet as pq  # noqa: E402
import rasterio  # noqa: E402
import yaml  # noqa: E402
from clay.export.artifacts import ExportOptions, export_artifacts  # noqa: E402
from pyproj import Transformer  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from .official_clay import lightning_checkpoint, official_embedding_encoder, official_tiny_mae  # noqa: E402

#: Clay-foundation/model's configs/metadata.yaml (the copy in tests/data): sensor → (gsd m, band →
#: (mean, std, wavelength µm)) in its band order, read here so the expected values do not come from
#: the runtime's own table.
_YAML = yaml.safe_load((Path(__file__).parent / "data" / "clay-v1.5" / "metadata.yaml").read_text())
TABLE = {name: (float(_YAML[name]["gsd"]), {band: (float(_YAML[name]["bands"]["mean"][band]), float(_YAML[name]["bands"]["std"][band]),
                                                   float(_YAML[name]["bands"]["wavelength"][band]))
                                            for band in _YAML[name]["band_order"]})
         for name in ("sentinel-2-l2a", "landsat-c2l2-sr", "naip", "sentinel-1-rtc")}  # fmt: skip
S2_FILES = {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
            "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12"}  # fmt: skip
S2_20M = {"rededge1", "rededge2", "rededge3", "nir08", "swir16", "swir22"}
LANDSAT_FILES = {
    "blue": "SR_B2",
    "green": "SR_B3",
    "red": "SR_B4",
    "nir08": "SR_B5",
    "swir16": "SR_B6",
    "swir22": "SR_B7",
}
SENSORS = ("sentinel-2-l2a", "sentinel-2-l2a+B02+B03+B04+B08", "landsat-c2l2-sr", "naip", "sentinel-1-rtc")
SIZE = 256  # the engine's chip size: one chip per scene


@pytest.fixture(scope="module")
def official_mae():
    return official_tiny_mae(seed=11)


@pytest.fixture(scope="module")
def engine(official_mae, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("v15sensors")
    ckpt = lightning_checkpoint(official_mae, folder / "clay-v1.5-tiny.ckpt")
    out = folder / "engine"
    export_artifacts(
        ExportOptions(out=out, checkpoint=ckpt, sensors=SENSORS, check=False, patch_embeddings=True),
        log=lambda _: None,
    )
    return out


def write(path: Path, bands: list[np.ndarray], crs: str, origin: tuple[float, float], pixel: float, dtype: str,
          nodata=None, descriptions=None, scale=None, offset=None, units=None, **creation) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = bands[0].shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(bands), "dtype": dtype, "crs": crs,
               "transform": from_origin(*origin, pixel, pixel), "nodata": nodata, **creation}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(bands).astype(dtype))
        for i in range(len(bands)):
            if descriptions:
                dst.set_band_description(i + 1, descriptions[i])
            if units:
                dst.set_band_unit(i + 1, units[i])
        if scale is not None:
            dst.scales, dst.offsets = [scale] * len(bands), [offset] * len(bands)
    return path


def centre_lonlat(path: Path) -> tuple[float, float]:
    with rasterio.open(path) as src:
        x, y = src.transform @ (src.width / 2, src.height / 2)
        return Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)


def metadata8(lon: float, lat: float, day: datetime.date) -> np.ndarray:
    """v1.5's training conventions, written out (stacchip prechip.py + claymodel datamodule.py):
    ISO week and noon as sin/cos, then [sin lon, cos lon, sin lat, cos lat]."""
    week, hour = day.isocalendar()[1] * 2 * np.pi / 52, 12 * 2 * np.pi / 24
    lo, la = np.radians(lon), np.radians(lat)
    return np.array([np.sin(week), np.cos(week), np.sin(hour), np.cos(hour), np.sin(lo), np.cos(lo), np.sin(la),
                     np.cos(la)], np.float32)  # fmt: skip


def official(mae, sensor: str, names: list[str], pixels: np.ndarray, lonlat, day) -> np.ndarray:
    """The official encoder's CLS embedding of one chip ``[C, S, S]`` of ``sensor``'s bands ``names``."""
    gsd, table = TABLE[sensor]
    mean = np.array([table[n][0] for n in names], np.float64)[:, None, None]
    std = np.array([table[n][1] for n in names], np.float64)[:, None, None]
    values = pixels.astype(np.float64)
    if sensor == "sentinel-1-rtc":  # datamodule.py: non-positive → 1e-10, then 10·log10
        values = 10 * np.log10(np.where(values > 0, values, 1e-10))
    meta = torch.from_numpy(metadata8(*lonlat, day))[None]
    cube = {"pixels": torch.from_numpy(((values - mean) / std).astype(np.float32))[None], "time": meta[:, :4],
            "latlon": meta[:, 4:], "waves": torch.tensor([table[n][2] for n in names]), "gsd": torch.tensor(gsd)}  # fmt: skip
    with torch.no_grad():
        return official_embedding_encoder(mae)(cube)[0][0, 0].numpy()


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args), "--backend", "onnx-cpu"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def one_embedding(path: Path) -> tuple[np.ndarray, pq.ParquetFile]:
    table = pq.read_table(path)
    assert table.num_rows == 1
    return np.array(table.column("embeddings")[0].as_py(), np.float32), table


# --- the products, as their files are ------------------------------------------------------------------


def s2_product(root: Path, bands=tuple(S2_FILES), seed: int = 1) -> tuple[Path, np.ndarray, list[str]]:
    """An Earth Search Sentinel-2 L2A item folder (``S2B_48QUE_20200223_0_L2A``): one uint16 COG per band,
    10 m bands 256 px, 20 m bands 128 px on the same origin, nodata 0, UTM 48N; DNs of 2020 (no
    offset). Returns the folder and the chip as v1.5's training saw it: 20 m bands nearest-repeated."""
    rng = np.random.default_rng(seed)
    folder = root / "S2B_48QUE_20200223_0_L2A"
    chip = []
    for name in bands:
        coarse = name in S2_20M
        n = SIZE // 2 if coarse else SIZE
        data = rng.integers(300, 6000, (n, n)).astype(np.uint16)
        write(folder / f"{S2_FILES[name]}.tif", [data], "EPSG:32648", (362600.0, 1987080.0), 20.0 if coarse else 10.0,
              "uint16", nodata=0)  # fmt: skip
        chip.append(np.repeat(np.repeat(data, 2, 0), 2, 1) if coarse else data)
    return folder, np.stack(chip).astype(np.float32), list(bands)


def landsat_product(root: Path, folder_name: str = "LC08_L2SP_129048_20230501_20230509_02_T1"):
    """A USGS Landsat 8 Collection 2 Level-2 product: ``<id>_SR_B2.TIF`` … ``_SR_B7.TIF``, uint16 DNs
    (declared scale 2.75e-5, offset -0.2, as the product's), nodata 0, 30 m, UTM 47N."""
    product = "LC08_L2SP_129048_20230501_20230509_02_T1"
    rng = np.random.default_rng(2)
    folder = root / folder_name
    chip, names = [], list(TABLE["landsat-c2l2-sr"][1])
    for name in names:
        data = rng.integers(7500, 25000, (SIZE, SIZE)).astype(np.uint16)
        write(folder / f"{product}_{LANDSAT_FILES[name]}.TIF", [data], "EPSG:32647", (600000.0, 2100000.0), 30.0,
              "uint16", nodata=0, scale=2.75e-5, offset=-0.2)  # fmt: skip
        chip.append(data)
    return folder, np.stack(chip).astype(np.float32), names


def naip_image(root: Path, bands: int = 4) -> tuple[Path, np.ndarray, list[str]]:
    """A NAIP quarter quad ``m_3807537_ne_18_060_20220511.tif``: one uint8 file, bands red, green, blue,
    NIR without descriptions (USDA's order; photometric RGB, the fourth an unspecified extra sample,
    not alpha), 0.6 m, NAD83 / UTM 18N."""
    rng = np.random.default_rng(3)
    data = [rng.integers(20, 250, (SIZE, SIZE)).astype(np.uint8) for _ in range(bands)]
    path = write(root / "m_3807537_ne_18_060_20220511.tif", data, "EPSG:26918", (300000.0, 4300000.0), 0.6, "uint8",
                 photometric="RGB", alpha="UNSPECIFIED")  # fmt: skip
    return path, np.stack(data).astype(np.float32), ["red", "green", "blue", "nir"][:bands]


def s1_product(root: Path, db: bool = False) -> tuple[Path, np.ndarray, list[str]]:
    """A Planetary Computer Sentinel-1 RTC item folder: ``vv.tif``, ``vh.tif`` float32 gamma0, 10 m, UTM
    48N; linear power, or the same values in dB with the band unit 'dB'."""
    rng = np.random.default_rng(4)
    linear = [np.exp(rng.normal(np.log(0.08), 0.8, (SIZE, SIZE))).astype(np.float32),
              np.exp(rng.normal(np.log(0.02), 0.8, (SIZE, SIZE))).astype(np.float32)]  # fmt: skip
    folder = root / "S1A_IW_GRDH_1SDV_20230101T054236_20230101T054301_046580_0595A6_rtc"
    for name, values in zip(("vv", "vh"), linear):
        stored = (10 * np.log10(values)).astype(np.float32) if db else values
        write(folder / f"{name}.tif", [stored], "EPSG:32648", (362600.0, 1987080.0), 10.0, "float32",
              units=["dB" if db else "linear"])  # fmt: skip
    return folder, np.stack(linear), ["vv", "vh"]


# --- the tests -----------------------------------------------------------------------------------------


def test_an_export_folder_holds_one_artifact_set_per_sensor_and_subset(engine):
    from clay.export.onnx_export import read_metadata

    assert sorted(p.name for p in engine.iterdir()) == sorted(SENSORS)
    subset = read_metadata(engine / "sentinel-2-l2a+B02+B03+B04+B08" / "clay.onnx")
    assert (subset.sensor, subset.bands, subset.band_wavelengths) == ("sentinel-2-l2a", ("B02", "B03", "B04", "B08"),
                                                                      (0.493, 0.56, 0.665, 0.842))  # fmt: skip
    assert subset.resampling == "nearest"  # stacchip's chipper


@pytest.mark.parametrize("product", ["s2", "s2-subset", "landsat", "naip", "s1"])
def test_each_sensors_scene_equals_the_official_embedder(engine, official_mae, tmp_path, product):
    """clay-run with the engine folder picks each scene's artifact by its product name and bands, and the
    chip embedding equals the official encoder's on the chip prepared here (cosine ≥ 0.9999, fp32)."""
    makers = {"s2": lambda: s2_product(tmp_path), "s2-subset": lambda: s2_product(tmp_path, ("blue", "green", "red", "nir")),
              "landsat": lambda: landsat_product(tmp_path), "naip": lambda: naip_image(tmp_path),
              "s1": lambda: s1_product(tmp_path)}  # fmt: skip
    scene, chip, names = makers[product]()
    sensor = {"s2": "sentinel-2-l2a", "s2-subset": "sentinel-2-l2a", "landsat": "landsat-c2l2-sr", "naip": "naip",
              "s1": "sentinel-1-rtc"}[product]  # fmt: skip
    result = clay_run(scene, "--engine", engine, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    day = {
        "s2": "2020-02-23",
        "s2-subset": "2020-02-23",
        "landsat": "2023-05-01",
        "naip": "2022-05-11",
        "s1": "2023-01-01",
    }[product]
    got, table = one_embedding(next((tmp_path / "out").glob("*.parquet")))
    grid = (
        min(Path(scene).glob("*")) if Path(scene).is_dir() else scene
    )  # B02.tif, …_SR_B2.TIF, vh.tif: the finest grid
    expected = official(
        official_mae, sensor, names, chip, centre_lonlat(grid), datetime.date.fromisoformat(day)
    )
    # the bound is 0.9999; fp32 gives ~1 - 1e-12, and the tighter bound is what catches a wrong
    # resampling of S2's 20 m bands (bilinear instead of the training's nearest: 0.99993 on this scene)
    assert cosine(got, expected) >= 0.999999, (product, cosine(got, expected))
    assert table.column("model").to_pylist() == ["clay-v1.5"] and table.column("sensor").to_pylist() == [
        sensor
    ]
    meta = table.schema.metadata
    assert (meta[b"clay:model"], meta[b"clay:sensor"]) == (b"clay-v1.5", sensor.encode())
    record = json.loads(meta[b"clay:preprocessing"])["sensor"]
    assert record["name"] == sensor and record["gsd_model_m"] == TABLE[sensor][0]
    if product == "s2-subset":
        assert (
            record["bands_used"] == ["B02", "B03", "B04", "B08"] and "B05" in record["sensor_bands_not_used"]
        )
        assert json.loads(meta[b"clay:engine"])["bands"] == ["B02", "B03", "B04", "B08"]
    if product == "naip":
        assert record["scene_pixel_m"] == pytest.approx(0.6, abs=0.01)
        assert "nir" in json.dumps(json.loads(meta[b"clay:preprocessing"])["units"])
        assert json.loads(meta[b"clay:preprocessing"])["invalid_pixels"] == {}  # no alpha: band 4 is NIR


def test_an_s2_band_subset_is_not_the_full_sensor_with_bands_left_out(engine, official_mae, tmp_path):
    """Why subsets need their own artifacts: the official embedder's weights for B02-B04+B08 depend on
    which other wavelengths are present, so the subset's embedding is not the full sensor's with the
    other bands at their means (normalised 0)."""
    _, chip, names = s2_product(tmp_path, ("blue", "green", "red", "nir"))
    lonlat, day = (103.7, 17.97), datetime.date(2020, 2, 23)
    subset = official(official_mae, "sentinel-2-l2a", names, chip, lonlat, day)
    full_names = list(TABLE["sentinel-2-l2a"][1])
    means = {n: TABLE["sentinel-2-l2a"][1][n][0] for n in full_names}
    padded = np.stack([chip[names.index(n)] if n in names else np.full((SIZE, SIZE), means[n], np.float32)
                       for n in full_names])  # fmt: skip
    assert cosine(subset, official(official_mae, "sentinel-2-l2a", full_names, padded, lonlat, day)) < 0.999


def test_s1_rtc_in_linear_power_and_in_db_give_the_same_embedding(engine, tmp_path):
    linear, _, _ = s1_product(tmp_path / "linear")
    db, _, _ = s1_product(tmp_path / "db", db=True)
    for folder, out in ((linear, "a"), (db, "b")):
        result = clay_run(folder, "--engine", engine, "--out", tmp_path / out)
        assert result.returncode == 0, result.stderr
    a, _ = one_embedding(next((tmp_path / "a").glob("*.parquet")))
    b, table = one_embedding(next((tmp_path / "b").glob("*.parquet")))
    assert cosine(a, b) >= 0.9999
    assert "dB" in json.dumps(json.loads(table.schema.metadata[b"clay:preprocessing"])["units"])


def assert_refused(result: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert all(w in last for w in words), last
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_landsat_files_in_a_folder_named_like_an_s2_product_are_refused(engine, tmp_path):
    folder, _, _ = landsat_product(
        tmp_path, "S2B_MSIL2A_20230501T033539_N0509_R061_T47QUE_20230501T075350.SAFE"
    )
    out = tmp_path / "out"
    assert_refused(clay_run(folder, "--engine", engine, "--out", out), out, "two sensors possible", "sentinel-2-l2a",
                   "landsat-c2l2-sr", "--sensor")  # fmt: skip
    assert_refused(clay_run(folder, "--engine", engine, "--out", out, "--sensor", "sentinel-2-l2a"), out,
                   "--sensor sentinel-2-l2a", "Landsat 8 Collection product")  # fmt: skip
    # the user who knows better says so: each file is what its own name says
    result = clay_run(folder, "--engine", engine, "--out", out, "--sensor", "landsat-c2l2-sr")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(next(out.glob("*.parquet"))).column("sensor").to_pylist() == ["landsat-c2l2-sr"]


def test_naip_given_sensor_sentinel_2_is_refused(engine, tmp_path):
    scene, _, _ = naip_image(tmp_path, bands=3)
    out = tmp_path / "out"
    assert_refused(clay_run(scene, "--engine", engine, "--out", out, "--sensor", "sentinel-2-l2a"), out,
                   "--sensor sentinel-2-l2a", "NAIP image")  # fmt: skip


def test_a_sensor_the_engine_has_no_artifact_for_names_the_ones_it_has(engine, tmp_path):
    folder, _, _ = landsat_product(tmp_path)
    only_s2 = tmp_path / "s2-only"
    only_s2.mkdir()
    (only_s2 / "sentinel-2-l2a").symlink_to(engine / "sentinel-2-l2a")
    (only_s2 / "naip").symlink_to(engine / "naip")
    out = tmp_path / "out"
    assert_refused(clay_run(folder, "--engine", only_s2, "--out", out), out, "a landsat-c2l2-sr scene",
                   "artifacts for naip, sentinel-2-l2a only")  # fmt: skip


def test_one_run_over_a_manifest_of_s2_landsat_and_naip_writes_each_with_its_sensor(engine, tmp_path):
    s2, _, _ = s2_product(tmp_path / "a")
    landsat, _, _ = landsat_product(tmp_path / "b")
    naip, _, _ = naip_image(tmp_path / "c")
    manifest = tmp_path / "scenes.txt"
    manifest.write_text(f"{s2}\n{landsat}\n{naip}\n")
    result = clay_run(manifest, "--engine", engine, "--out", tmp_path / "out", "--patch-raster")
    assert result.returncode == 0, result.stderr
    written = {p.name: pq.read_table(p) for p in (tmp_path / "out").glob("*[!s].parquet")}
    # patch rasters follow the engine's 8-px patches on each scene's own grid: 80 m, 240 m, 4.8 m cells
    for stem, cell in (("S2B_48QUE_20200223_0_L2A", 80.0), ("LC08_L2SP_129048_20230501_20230509_02_T1", 240.0),
                       ("m_3807537_ne_18_060_20220511", 4.8)):  # fmt: skip
        with rasterio.open(tmp_path / "out" / f"{stem}.patches.tif") as src:
            assert src.res == pytest.approx((cell, cell)) and (src.width, src.height) == (32, 32)
            assert (
                src.tags()["CLAY_SENSOR"]
                == written[f"{stem}.parquet"].schema.metadata[b"clay:sensor"].decode()
            )
    sensors = {
        name: (t.column("sensor")[0].as_py(), t.schema.metadata[b"clay:sensor"].decode())
        for name, t in written.items()
    }
    assert sensors == {
        "S2B_48QUE_20200223_0_L2A.parquet": ("sentinel-2-l2a", "sentinel-2-l2a"),
        "LC08_L2SP_129048_20230501_20230509_02_T1.parquet": ("landsat-c2l2-sr", "landsat-c2l2-sr"),
        "m_3807537_ne_18_060_20220511.parquet": ("naip", "naip"),
    }
    assert {len(t.column("embeddings")[0].as_py()) for t in written.values()} == {192}
    # every artifact the run used is named, and the closing line gives their backends
    said = [line for line in result.stderr.splitlines() if line.startswith("clay-run: engine ") and " folder " not in line[:25]]
    assert [line.split()[2] for line in said] == ["sentinel-2-l2a/clay.onnx", "landsat-c2l2-sr/clay.onnx", "naip/clay.onnx"]
    assert "each scene is embedded by the artifact of its sensor" in result.stderr


# --- the rules themselves, without an engine -----------------------------------------------------------


@pytest.mark.parametrize(("name", "sensor"), [
    ("S2A_MSIL2A_20230501T033539_N0509_R061_T47QUE_20230501T075350.SAFE", "sentinel-2-l2a"),
    ("S2B_48QUE_20200223_0_L2A", "sentinel-2-l2a"),
    ("S2A_T20HNJ_20240311T140636_L2A", "sentinel-2-l2a"),
    ("LC09_L2SP_086107_20240311_20240312_02_T2_SR_B4.TIF", "landsat-c2l2-sr"),
    ("LC08_L1TP_129048_20230501_20230509_02_T1_B4.TIF", "landsat-c2l1"),
    ("HLS.L30.T48QUE.2024060T033701.v2.0.B04.tif", "landsat-c2l2-sr"),
    ("HLS.S30.T48QUE.2024060T033701.v2.0.B04.tif", "sentinel-2-l2a"),
    ("m_4207009_ne_19_060_20211024.tif", "naip"),
    ("S1A_IW_GRDH_1SDV_20230101T054236_20230101T054301_046580_0595A6_rtc", "sentinel-1-rtc"),
    ("MOD09GA.A2020054.h27v07.061.2020056034012.tif", "modis"),
])  # fmt: skip
def test_product_names_say_their_sensor(name, sensor):
    from clay.runtime.scenes.products import products_in

    (product,) = products_in(Path("/data") / name)
    assert product.sensor == sensor and product.v1_5_refused is None


def test_products_clay_v15_was_not_trained_on_are_refused_for_it():
    from clay.runtime.scenes.products import products_in

    for name, words in (
        ("LE07_L2SP_129048_20200501_20200509_02_T1_SR_B3.TIF", "Landsat 8/9 OLI"),
        ("S2A_MSIL1C_20230501T033539_N0509_R061_T47QUE_20230501T075350.SAFE", "not Level-1C"),
    ):
        (product,) = products_in(Path("/data") / name)
        assert product.sensor is None and words in product.v1_5_refused


def test_band_names_that_two_sensors_share_are_two_sensors_possible(tmp_path):
    """B02, B03, B04 are Sentinel-2's blue, green, red and HLS L30's (Landsat's) too: one line naming both
    and --sensor; with B08 as well only Sentinel-2 has them all."""
    from clay.runtime.errors import SceneError
    from clay.runtime.scenes.inputs import SceneFiles
    from clay.runtime.scenes.sensing import scene_sensor

    files = [write(tmp_path / f"{b}.tif", [np.ones((8, 8))], "EPSG:32648", (0.0, 80.0), 10.0, "uint16")
             for b in ("B02", "B03", "B04")]  # fmt: skip
    with pytest.raises(
        SceneError, match=r"two sensors possible: sentinel-2-l2a and landsat-c2l2-sr .*--sensor"
    ):
        scene_sensor(SceneFiles(tmp_path, tuple(files)))
    assert scene_sensor(SceneFiles(tmp_path, tuple(files)), "landsat-c2l2-sr") == (
        "landsat-c2l2-sr",
        "--sensor",
    )
    files.append(write(tmp_path / "B08.tif", [np.ones((8, 8))], "EPSG:32648", (0.0, 80.0), 10.0, "uint16"))
    assert scene_sensor(SceneFiles(tmp_path, tuple(files)))[0] == "sentinel-2-l2a"
    with pytest.raises(SceneError, match="no Clay v1.5 sensor recognised"):
        scene_sensor(SceneFiles(tmp_path, (write(tmp_path / "x.tif", [np.ones((8, 8))] * 2, "EPSG:32648", (0.0, 80.0),
                                                 10.0, "uint16"),)))  # fmt: skip


def test_sensor_specs_and_subsets():
    from clay.runtime.sensors import SensorError, parse_sensors, sensor_spec

    assert parse_sensors("naip, sentinel-2-l2a:B08+B02+B03+B04,naip") == (
        "naip",
        "sentinel-2-l2a+B02+B03+B04+B08",
    )
    sub = sensor_spec("sentinel-2-l2a+B04+B02")
    assert (sub.bands, sub.wavelengths, sub.means, sub.gsd) == (
        ("B02", "B04"),
        (0.493, 0.665),
        (1105.0, 1552.0),
        10.0,
    )
    assert sensor_spec("sentinel-2-l2a+" + "+".join(sub.subset(("B02",)).bands)).key == "sentinel-2-l2a+B02"
    with pytest.raises(SensorError, match="sentinel-2-l2a has no band"):
        sensor_spec("sentinel-2-l2a+VV")


def test_a_file_declaring_another_scale_is_brought_to_the_products_stored_values(tmp_path):
    """Landsat SR given as reflectance (float32, scale 1, offset 0 declared as unit scale) is not what
    v1.5 saw: a file declaring scale 1e-4 (an HLS-like reflectance × 10000) is brought back to
    Collection 2 DNs, DN = (raw · 1e-4 + 0.2) / 2.75e-5; NAIP declaring a scale is refused."""
    from clay.runtime.errors import SceneError
    from clay.runtime.scenes.headers import read_header
    from clay.runtime.scenes.units import stored_conversion

    path = write(tmp_path / "red.tif", [np.full((8, 8), 1000)], "EPSG:32648", (0.0, 80.0), 30.0, "int16", scale=1e-4,
                 offset=0.0)  # fmt: skip
    conversion = stored_conversion(read_header(path), 1, "red", "landsat-c2l2-sr").conversion
    assert 1000 * conversion.gain + conversion.bias == pytest.approx((1000 * 1e-4 + 0.2) / 2.75e-5)
    with pytest.raises(SceneError, match="cannot be recovered"):
        stored_conversion(read_header(path), 1, "red", "naip")


def test_a_landsat_stac_item_is_embedded_by_the_landsat_artifact(engine, official_mae, tmp_path):
    """A Planetary Computer ``landsat-c2-l2`` Item (asset keys blue…swir22 with eo:bands common names,
    raster:bands declaring the product's scale 2.75e-5 and offset -0.2): its assets are Landsat's bands
    (not Sentinel-2's), its sensor is told by the collection, and the embedding equals the official one."""
    folder, chip, names = landsat_product(tmp_path)
    product = "LC08_L2SP_129048_20230501_20230509_02_T1"
    with rasterio.open(folder / f"{product}_SR_B2.TIF") as src:
        bounds, transform, crs = src.bounds, src.transform, src.crs
    feature = {
        "type": "Feature", "stac_version": "1.0.0", "id": product, "collection": "landsat-c2-l2",
        "geometry": None, "bbox": None, "links": [],
        "properties": {"datetime": "2023-05-01T03:50:00Z", "platform": "landsat-8", "proj:epsg": crs.to_epsg()},
        "assets": {key: {"href": f"./{product}_{LANDSAT_FILES[key]}.TIF", "roles": ["data"],
                         "eo:bands": [{"name": LANDSAT_FILES[key].replace("SR_", "OLI_"), "common_name": key}],
                         "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 2.75e-5, "offset": -0.2}]}
                   for key in names},
    }  # fmt: skip
    item = folder / "item.json"
    item.write_text(json.dumps(feature))
    assert bounds and transform  # the files' grid is what the Item's assets point at
    result = clay_run(item, "--engine", engine, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    got, table = one_embedding(tmp_path / "out" / f"{product}.parquet")
    expected = official(official_mae, "landsat-c2l2-sr", names, chip, centre_lonlat(folder / f"{product}_SR_B2.TIF"),
                        datetime.date(2023, 5, 1))  # fmt: skip
    assert cosine(got, expected) >= 0.999999
    record = json.loads(table.schema.metadata[b"clay:preprocessing"])["sensor"]
    assert (record["name"], record["told_by"]) == ("landsat-c2l2-sr", "STAC collection landsat-c2-l2")


def test_a_v15_engine_that_records_no_resampling_is_read_nearest_as_v15_was_trained():
    """Engines exported before v1.5's resampling was recorded (issue 36) are read nearest, as stacchip's
    chipper made the training chips; v0 engines that record none stay bilinear."""
    from clay.runtime.resampling import choose_resampling

    assert choose_resampling(None, None, "clay-v1.5")[0] == "nearest"
    assert choose_resampling(None, None, "clay-v0")[0] == "bilinear"
    assert choose_resampling(None, "bilinear", "clay-v1.5")[0] == "bilinear"


def test_a_band_subset_given_the_full_sensors_artifact_says_which_export_takes_it(engine, tmp_path):
    folder, _, _ = s2_product(tmp_path, ("blue", "green", "red", "nir"))
    out = tmp_path / "out"
    assert_refused(clay_run(folder, "--engine", engine / "sentinel-2-l2a", "--out", out), out,
                   "lacks sentinel-2-l2a band(s) B05", "clay-export --sensor sentinel-2-l2a+B02+B03+B04+B08")  # fmt: skip


def test_the_python_api_serves_every_sensor_of_the_folder(engine, tmp_path):
    """ClayEmbedder on the folder: embed_scene opens each scene against its sensor's artifact (the same
    vector as clay-run), and RunOptions(sensor=...) names the artifact embed() runs."""
    from clay.runtime.api import ClayEmbedder
    from clay.runtime.options import RunOptions

    naip, _, _ = naip_image(tmp_path)
    landsat, _, _ = landsat_product(tmp_path)
    result = clay_run(naip, "--engine", engine, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    by_cli, _ = one_embedding(tmp_path / "out" / "m_3807537_ne_18_060_20220511.parquet")
    with ClayEmbedder(engine, backend="onnx-cpu") as embedder:
        assert embedder.metadata.sensor == "sentinel-2-l2a"  # embed()'s default artifact
        table = embedder.embed_scene(naip)
        assert embedder.embed_scene(landsat).column("sensor").to_pylist() == ["landsat-c2l2-sr"]
    assert table.column("sensor").to_pylist() == ["naip"]
    assert cosine(np.array(table.column("embeddings")[0].as_py()), by_cli) >= 0.999999
    with ClayEmbedder(engine, backend="onnx-cpu", options=RunOptions(sensor="naip")) as embedder:
        assert embedder.metadata.sensor == "naip" and embedder.metadata.bands == (
            "red",
            "green",
            "blue",
            "nir",
        )


def test_an_embedder_given_one_artifact_of_the_folder_serves_its_other_sensors(engine, tmp_path):
    """clay-serve opens the folder's Sentinel-2 artifact for its chip endpoint and hands that engine to
    POST /scene's ClayEmbedder: a NAIP scene is still embedded by the NAIP artifact (it was a 422 saying
    the engine is for sentinel-2-l2a), equal to the folder's embedder; the served engine stays open."""
    from clay.runtime.api import ClayEmbedder
    from clay.runtime.engines.choice import open_engine
    from clay.runtime.options import RunOptions
    from clay.runtime.serve.scenes import SceneLimits, parse_request

    naip, _, _ = naip_image(tmp_path)
    served = open_engine(engine, "onnx-cpu")
    try:
        assert served.metadata.sensor == "sentinel-2-l2a"
        with ClayEmbedder(served) as embedder:
            table = embedder.embed_scene(naip)
        with ClayEmbedder(engine, backend="onnx-cpu") as embedder:
            expected = embedder.embed_scene(naip)
        assert table.column("sensor").to_pylist() == ["naip"]
        assert np.array_equal(np.stack(table["embeddings"].to_numpy(zero_copy_only=False)),
                              np.stack(expected["embeddings"].to_numpy(zero_copy_only=False)))  # fmt: skip
        request = parse_request({"sensor": "naip"}, None, RunOptions(), SceneLimits(), served.metadata)
        assert request.options.sensor == "naip"
    finally:
        served.close()
