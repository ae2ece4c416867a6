"""The embedded default: shipped demo weights, engine and scene; `clay-run --demo` and its picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.demo import DEMO_DIR, DEMO_ENGINE, DEMO_SCENE
from PIL import Image
from shapely import from_wkb

from .conftest import SSL4EO

ROOT = Path(__file__).resolve().parents[1]


def package_data_files() -> list[Path]:
    return [p for p in [*(ROOT / "runtime" / "demo").rglob("*"), *(ROOT / "training" / "demo").rglob("*.pt")] if p.is_file()]


def test_package_data_stays_under_40_mb_and_carries_the_licence():
    total = sum(p.stat().st_size for p in package_data_files())
    assert total < 40e6, total
    notice = (DEMO_SCENE / "NOTICE.md").read_text()
    assert "CC-BY-SA-4.0" in notice and "Contains modified Copernicus Sentinel data (2020)" in notice


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    code = (
        "import sys\n"
        "from clay.runtime.cli import main\n"
        f"try:\n    main(['--demo', '--out', {str(out)!r}])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch-free')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_demo_writes_chips_patches_and_preview_without_torch(demo_run):
    out, result = demo_run
    assert "torch-free" in result.stdout
    assert (out / "demo.parquet").exists() and (out / "demo.patches.parquet").exists()
    assert "reservoir" in result.stderr and "demo-preview.png" in result.stderr
    table = pq.read_table(out / "demo.parquet")
    assert table.num_rows == 9  # 1068² px with shifted edge chips: 3 × 3
    embeddings = np.stack(table["embeddings"].to_numpy(zero_copy_only=False))
    assert embeddings.shape == (9, 256) and np.isfinite(embeddings).all()
    lon_lat = [from_wkb(g).centroid for g in table["geometry"].to_pylist()]
    assert all(103.70 < p.x < 103.81 and 17.87 < p.y < 17.97 for p in lon_lat)  # inside the T48QUE patch
    patches = pq.read_table(out / "demo.patches.parquet")
    assert patches.num_rows > 9 * 200


def test_demo_preview_is_a_real_picture(demo_run):
    out, _ = demo_run
    image = np.asarray(Image.open(out / "demo-preview.png").convert("RGB")).astype(float)
    assert image.shape[0] > 300 and image.shape[1] > 900
    body = image[60:]
    left, right = body[:, : body.shape[1] // 2], body[:, body.shape[1] // 2 :]
    assert body.std() > 20  # not blank
    assert np.abs(left.mean(axis=(0, 1)) - right.mean(axis=(0, 1))).max() > 5 or np.abs(left - right).mean() > 20


def test_the_preview_title_wraps_at_words_and_keeps_the_whole_demo_description(demo_run):
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.outputs.preview import title_lines
    from PIL import ImageDraw

    out, _ = demo_run
    with Image.open(out / "demo-preview.png") as picture:
        width = picture.width - 16  # the title's room: the canvas less its two margins
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    weights = read_engine_metadata(DEMO_ENGINE).weights
    title = f"T48QUE-20200223  |  2020-02-23  |  engine {DEMO_ENGINE.name} (int8)  |  model: tiny, {weights}"
    assert " ".join(title_lines(title, width, measure)) == title  # the demo's canvas holds all of it
    short = title_lines(title, 400, measure)
    assert len(short) == 2 and short[-1].endswith(" ...") and all(measure(line) <= 400 for line in short)
    assert set(" ".join(short).removesuffix(" ...").split(" ")) <= set(title.split(" "))  # no word cut


torch = pytest.importorskip("torch", reason="re-exporting and scoring the demo weights needs the [export] extra")


def test_shipped_engine_equals_a_fresh_export_of_the_shipped_weights(tmp_path):
    import onnxruntime as ort
    from clay.runtime.bands import BAND_NAMES
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.training.synthetic import make_chips

    result = subprocess.run([sys.executable, "-m", "clay.export.cli", "--int8-cpu", "--patch-embeddings", "--no-check",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    shipped = read_engine_metadata(DEMO_ENGINE)
    fresh = read_engine_metadata(tmp_path / "clay.int8.onnx")
    assert (fresh.groups, fresh.bands, fresh.checkpoint_sha256) == (shipped.groups, shipped.bands, shipped.checkpoint_sha256)
    assert "demo weights" in shipped.weights and "not Clay v0" in shipped.weights
    pixels, lonlat, date = make_chips(2, seed=8)
    feeds = {"pixels": pixels[:, [BAND_NAMES.index(b) for b in shipped.bands]], "lonlat": lonlat, "date": date}
    a = ort.InferenceSession(str(DEMO_ENGINE), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(tmp_path / "clay.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(a, b):
        assert np.abs(x - y).max() < 1e-5


def test_demo_weights_beat_untrained_and_per_band_mean_on_the_held_out_quadrant(tmp_path):
    from clay.training.demo import WEIGHTS, evaluate, prepare

    _, val = prepare(tmp_path, DEMO_SCENE, pair=None)
    scores = evaluate(WEIGHTS, val / "bottom-right.tif", DEMO_SCENE)
    assert scores["demo_weights"] < scores["untrained"]
    assert scores["demo_weights"] < scores["per_band_mean"]
    water = scores["water_fraction_r2"]
    assert set(water) == {"demo_weights", "untrained", "cell_band_statistics"}
    assert all(0 <= v <= 1 for v in water.values()), water
    assert water["cell_band_statistics"] > 0.5, water  # the scene's water is plain in its own bands


def test_water_probe_reads_a_target_the_three_components_carry_and_not_one_they_do_not():
    from clay.training.demo import explained_by_three_components

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1024, 64)) * np.r_[10.0, 8.0, 6.0, np.ones(61)]  # three dominant directions
    assert explained_by_three_components(vectors, vectors[:, 0] + vectors[:, 2]) > 0.99
    assert explained_by_three_components(vectors, vectors[:, 40]) < 0.05


def test_the_s2_s1_pair_trains_as_one_padded_chip_with_linear_sar(tmp_path):
    from clay.runtime.bands import GROUP_NAMES
    from clay.training.data import inspect_chip
    from clay.training.demo import prepare

    train, _ = prepare(tmp_path, DEMO_SCENE, SSL4EO)  # the shipped crop of the pair (128² px of S2)
    chip = inspect_chip(train / "ssl4eo-s2-s1.tif", GROUP_NAMES, partial_groups=True, pad_small=True)
    assert chip.groups == ("rgb", "rededge", "nir", "swir", "sar") and (chip.height, chip.width) == (128, 128)  # S1 covers the crop
    with rasterio.open(chip.path) as src:
        sar = src.read([src.descriptions.index(b) + 1 for b in ("VH", "VV")])
        assert src.tags()["date"] == "2020-06-04" and src.crs.to_epsg() == 4326
    assert 0 < sar.min() and sar.max() < 10 and np.median(sar[0]) < np.median(sar[1])  # linear power, VH < VV


def test_demo_folder_holds_only_what_the_demo_needs():
    names = sorted(p.name for p in DEMO_DIR.iterdir() if p.name != "__pycache__")
    assert names == sorted([DEMO_ENGINE.name, DEMO_SCENE.name, "__init__.py"])


def test_coarser_bands_read_by_resampled_window_equal_the_warp():
    """The demo's 20 m bands are read by a bilinear resampled window, not a WarpedVRT: same values."""
    from dataclasses import replace

    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.scenes.reader import read_chip
    from clay.runtime.scenes.scene import open_scene

    scene = open_scene(DEMO_SCENE, read_engine_metadata(DEMO_ENGINE))
    windowed = {s.band for s in scene.sources if s.source_transform is not None}
    assert windowed == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    warped = replace(scene, sources=tuple(replace(s, mode="warp" if s.mode == "resample" else s.mode, source_transform=None)
                                          for s in scene.sources))  # fmt: skip
    for chip in scene.chips()[::4]:  # corner, centre and the shifted far corner
        fast, _ = read_chip(scene, chip)
        slow, _ = read_chip(warped, chip)
        assert np.abs(fast - slow).max() <= 1.0  # uint16 reflectance: at most one rounding step
