"""clay-export of Clay v1.5: per-sensor artifact sets against the official encoder, metadata, the
in-graph ISO week, and the one-line refusals (exit 2, nothing written)."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [export] extra")
onnx = pytest.importorskip("onnx", reason="export tests need the [export] extra")
ort = pytest.importorskip("onnxruntime")

from clay.export.artifacts import ExportOptions, export_artifacts  # noqa: E402
from clay.export.graph_v15 import iso_week  # noqa: E402
from clay.export.onnx_export import read_metadata  # noqa: E402
from clay.runtime.sensors import SENSORS, metadata_values  # noqa: E402
from clay.training.synthetic import make_chips  # noqa: E402

from .official_clay import lightning_checkpoint, official_embedding_encoder, official_tiny_mae  # noqa: E402

SENSOR_PAIR = ("sentinel-2-l2a", "landsat-c2l2-sr")


@pytest.fixture(scope="module")
def official_mae():
    return official_tiny_mae(seed=5)


@pytest.fixture(scope="module")
def v15_ckpt(official_mae, tmp_path_factory) -> Path:
    return lightning_checkpoint(official_mae, tmp_path_factory.mktemp("v15ckpt") / "clay-v1.5-tiny.ckpt")


@pytest.fixture(scope="module")
def engine(v15_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v15engine")
    options = ExportOptions(out=out, checkpoint=v15_ckpt, sensors=SENSOR_PAIR, int8_cpu=True, patch_embeddings=True)
    report = export_artifacts(options, log=lambda _: None)
    assert report.scores and all(s.passed for s in report.scores)
    return out


def official_embeddings(mae, sensor_name: str, pixels: np.ndarray, lonlat: np.ndarray, date: np.ndarray) -> np.ndarray:
    """The official encoder's CLS embedding on the chips normalised as the official data module does
    (``v2.Normalize(mean, std)`` with metadata.yaml's constants), metadata from the Python reference."""
    sensor = SENSORS[sensor_name]
    mean = torch.tensor(sensor.means)[None, :, None, None]
    std = torch.tensor(sensor.stds)[None, :, None, None]
    values = torch.tensor([metadata_values(float(lo), float(la), datetime.date(int(y), int(m), int(d)))
                           for (lo, la), (y, m, d) in zip(lonlat, date)], dtype=torch.float32)  # fmt: skip
    cube = {"pixels": (torch.from_numpy(pixels) - mean) / std, "time": values[:, :4], "latlon": values[:, 4:],
            "waves": torch.tensor(list(sensor.wavelengths)), "gsd": torch.tensor(sensor.gsd)}  # fmt: skip
    with torch.no_grad():
        return official_embedding_encoder(mae)(cube)[0][:, 0].numpy()


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run(path: Path, pixels, lonlat, date):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels, "lonlat": lonlat, "date": date})


def test_one_artifact_set_per_sensor_in_one_folder(engine):
    assert sorted(p.name for p in engine.iterdir()) == sorted(SENSOR_PAIR)
    for sensor in SENSOR_PAIR:
        assert sorted(p.name for p in (engine / sensor).iterdir()) == ["clay.int8.onnx", "clay.onnx"]


@pytest.mark.parametrize("sensor", SENSOR_PAIR)
def test_artifacts_equal_the_official_encoder_on_raw_chips(engine, official_mae, sensor, torch_threads):
    pixels, lonlat, date = make_chips(3, seed=21, size=256)
    raw = pixels[:, :10] if sensor == "sentinel-2-l2a" else pixels[:, [2, 1, 0, 7, 8, 9]] * 4 + 7000  # Landsat-like DNs
    expected = official_embeddings(official_mae, sensor, raw, lonlat, date)
    fp32, patches = run(engine / sensor / "clay.onnx", raw, lonlat, date)
    int8, _ = run(engine / sensor / "clay.int8.onnx", raw, lonlat, date)
    assert patches.shape == (3, 1, 32, 32, 192)
    assert cosine(fp32, expected).min() >= 0.9999 and np.abs(fp32 - expected).max() <= 1e-4
    assert cosine(int8, expected).min() >= 0.99
    # the other sensor's artifact on the same numbers is another function (wavelengths, norms, gsd folded)
    other = SENSOR_PAIR[1 - SENSOR_PAIR.index(sensor)]
    if len(SENSORS[other].bands) == raw.shape[1]:
        assert cosine(run(engine / other / "clay.onnx", raw, lonlat, date)[0], expected).min() < 0.999


def test_metadata_names_model_sensor_bands_sizes_checksum_and_conventions(engine, v15_ckpt):
    meta = read_metadata(engine / "sentinel-2-l2a" / "clay.onnx")
    assert (meta.model, meta.model_size, meta.sensor, meta.chip_size, meta.patch_size, meta.dim) == (
        "clay-v1.5", "tiny", "sentinel-2-l2a", 256, 8, 192)  # fmt: skip
    assert meta.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert meta.band_wavelengths == (0.493, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19)
    assert meta.gsd == 10.0 and meta.format_version == 2
    assert meta.checkpoint_sha256 == hashlib.sha256(v15_ckpt.read_bytes()).hexdigest()
    assert meta.preprocessing["conventions"] == "training"
    assert meta.preprocessing["location_values"].startswith("[sin lon")
    assert meta.output_shapes == {"embedding": (192,), "patch_embeddings": (1, 32, 32, 192)}
    landsat = read_metadata(engine / "landsat-c2l2-sr" / "clay.int8.onnx")
    assert (landsat.sensor, landsat.gsd, landsat.precision, len(landsat.bands)) == ("landsat-c2l2-sr", 30.0, "int8", 6)


def test_the_graphs_iso_week_is_pythons_for_every_day_of_three_decades():
    days = [datetime.date(2000, 1, 1) + datetime.timedelta(days=k) for k in range(366 * 31)]
    dates = torch.tensor([[d.year, d.month, d.day] for d in days], dtype=torch.float32)
    assert iso_week(dates).int().tolist() == [d.isocalendar()[1] for d in days]


def test_sar_in_db_and_tutorial_conventions_at_another_chip_size(v15_ckpt, tmp_path):
    """Sentinel-1 takes linear power (dB in the graph, checked against an explicit 10·log10 reference,
    zeros included); the tutorials' convention (latitude first) is recorded and changes the embedding."""
    out = tmp_path / "s1"
    report = export_artifacts(ExportOptions(out=out, checkpoint=v15_ckpt, sensors=("sentinel-1-rtc",), chip_size=64,
                                            convention="tutorials"), log=lambda _: None)  # fmt: skip
    assert report.scores and all(s.passed for s in report.scores)
    meta = read_metadata(out / "sentinel-1-rtc" / "clay.onnx")
    assert (meta.chip_size, meta.bands, meta.preprocessing["conventions"]) == (64, ("VV", "VH"), "tutorials")
    assert meta.preprocessing["location_values"].startswith("[sin lat")
    assert meta.resampling == "nearest"  # stacchip's chipper (clay.runtime.resampling.CLAY_V15), unless said
    training = tmp_path / "s1-training"
    export_artifacts(ExportOptions(out=training, checkpoint=v15_ckpt, sensors=("sentinel-1-rtc",), chip_size=64,
                                   check=False, resampling="bilinear"), log=lambda _: None)  # fmt: skip
    assert read_metadata(training / "sentinel-1-rtc" / "clay.onnx").resampling == "bilinear"  # clay-export --resampling
    pixels = np.full((1, 2, 64, 64), 0.05, np.float32)
    lonlat, date = np.array([[100.0, 10.0]], np.float32), np.array([[2021, 6, 1]], np.float32)
    a = run(out / "sentinel-1-rtc" / "clay.onnx", pixels, lonlat, date)[0]
    b = run(training / "sentinel-1-rtc" / "clay.onnx", pixels, lonlat, date)[0]
    assert np.abs(a - b).max() > 1e-3


def clay_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.export.cli", *args], capture_output=True, text=True, timeout=600)


def assert_refused(result: subprocess.CompletedProcess, out: Path, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_a_checkpoint_of_neither_clay_is_refused_in_one_line(tmp_path):
    path = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"model.backbone.conv1.weight": torch.zeros(2, 3, 3, 3)}}, path)
    out = tmp_path / "out"
    assert_refused(clay_export("--checkpoint", str(path), "--out", str(out)), out, "neither a Clay v0 nor a Clay v1.5 checkpoint")


def test_a_v15_checkpoint_with_a_missing_key_is_refused_in_one_line(official_mae, tmp_path):
    path = lightning_checkpoint(official_mae, tmp_path / "broken.ckpt", drop=("model.encoder.patch_embedding.fclayer.l2.bias",))
    out = tmp_path / "out"
    result = clay_export("--checkpoint", str(path), "--sensor", "sentinel-2-l2a", "--out", str(out))
    assert_refused(result, out, "1 missing: model.encoder.patch_embedding.fclayer.l2.bias")


def test_an_unknown_sensor_is_refused_in_one_line(v15_ckpt, tmp_path):
    out = tmp_path / "out"
    result = clay_export("--checkpoint", str(v15_ckpt), "--sensor", "sentinel-2-l2a,worldview-3", "--out", str(out))
    assert_refused(result, out, "unknown sensor 'worldview-3'; Clay v1.5 knows: sentinel-2-l2a")


def test_v0_options_on_a_v15_checkpoint_are_refused(v15_ckpt, tmp_path):
    out = tmp_path / "out"
    assert_refused(clay_export("--checkpoint", str(v15_ckpt), "--groups", "rgb", "--out", str(out)), out, "use --sensor")


def test_the_command_line_exports_and_prints_the_files(v15_ckpt, tmp_path):
    out = tmp_path / "cli"
    result = clay_export("--checkpoint", str(v15_ckpt), "--sensor", "naip", "--chip-size", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / "naip" / "clay.onnx")]
    assert "clay-export: naip: 4 bands (red green blue nir), gsd 1 m" in result.stderr
    record = json.loads({p.key: p.value for p in onnx.load(str(out / "naip" / "clay.onnx")).metadata_props}["model"])
    assert record == "clay-v1.5"


def scene_chips(path: Path, rows, cols, size: int):
    """The chips' raw pixels read with rasterio and their centres in degrees with pyproj: computed here
    independently of the runtime's reader and geometry."""
    import rasterio
    from pyproj import Transformer
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        pixels = np.stack([src.read(window=Window(c, r, size, size)).astype(np.float32) for r, c in zip(rows, cols)])
        to_degrees = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        centres = [src.transform @ (c + size / 2, r + size / 2) for r, c in zip(rows, cols)]
    lonlat = np.array([to_degrees.transform(x, y) for x, y in centres], np.float32)
    return pixels, lonlat


@pytest.mark.parametrize(("artifact", "bound"), [("clay.onnx", 0.9999), ("clay.int8.onnx", 0.99)])
def test_clay_run_on_an_s2_scene_gives_the_official_embeddings(engine, official_mae, tmp_path, artifact, bound):
    """clay-run with the v1.5 engine on a small S2 scene (uint16 DNs of 2020, before the +1000 offset):
    every chip's embedding equals the official encoder's on the same chip, normalised with
    metadata.yaml's constants, located at the chip's centre and dated by the scene."""
    import pyarrow.parquet as pq
    from clay.runtime.bands import S2_BANDS
    from clay.training.synthetic import write_scene

    scene = write_scene(tmp_path / "s2.tif", 300, 280, bands=S2_BANDS, dtype="uint16", seed=4, date="2020-02-23")
    out = tmp_path / "out"
    target = engine / "sentinel-2-l2a" / artifact if artifact == "clay.onnx" else engine  # the folder: its int8 for onnx-cpu
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(scene), "--engine", str(target),
                             "--backend", "onnx-cpu", "--out", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    named = artifact if artifact == "clay.onnx" else f"sentinel-2-l2a/{artifact}"  # a folder of sensors: the sensor's too
    assert f"engine {named} on onnx-cpu (clay-v1.5 tiny, sentinel-2-l2a, conventions training" in result.stderr
    table = pq.read_table(out / "s2.parquet")
    rows, cols = table.column("row").to_pylist(), table.column("col").to_pylist()
    assert sorted(zip(rows, cols)) == [(0, 0), (0, 44), (24, 0), (24, 44)]  # 256-px chips, the last ones flush with the edge
    got = np.array(table.column("embeddings").to_pylist(), np.float32)
    pixels, lonlat = scene_chips(scene, rows, cols, 256)
    date = np.array([[2020, 2, 23]] * len(rows), np.float32)
    expected = official_embeddings(official_mae, "sentinel-2-l2a", pixels, lonlat, date)
    assert cosine(got, expected).min() >= bound
    engine_record = json.loads(table.schema.metadata[b"clay:engine"])
    assert (engine_record["model"], engine_record["preprocessing"]["conventions"]) == ("clay-v1.5", "training")


def test_every_other_row_of_the_format_table_builds_and_meets_its_bound(v15_ckpt, tmp_path):
    """--fp16 (fp16 graph, CUDA artifact, TensorRT-RTX plan built on the CPU), --bf16-cpu (OpenVINO
    IR) and --int8-openvino (NNCF's int8 IR, calibrated on the demo scene's chips) for a v1.5 sensor: each checked artifact meets its bound on the chips, extremes included; the
    plan is built and kept, checked only where a GPU can run it (one note says so)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "rows"
    report = export_artifacts(ExportOptions(out=out, checkpoint=v15_ckpt, sensors=("sentinel-2-l2a",), chip_size=64,
                                            fp16=True, bf16_cpu=True, int8_openvino=True), log=lambda _: None)  # fmt: skip
    checked = {s.artifact.split(" ")[0] for s in report.scores}
    assert {"clay.onnx", "clay.fp16.onnx", "clay.cuda.onnx", "clay.bf16.xml", "clay.int8.xml"} <= checked
    assert all(s.passed for s in report.scores)
    files = {p.name for p in (out / "sentinel-2-l2a").iterdir()}
    assert {"clay.onnx", "clay.fp16.onnx", "clay.cuda.onnx", "clay.bf16.xml", "clay.bf16.bin"} <= files
    if "clay.plan" in files:
        sidecar = json.loads((out / "sentinel-2-l2a" / "clay.plan.json").read_text())
        assert (sidecar["model"], sidecar["sensor"], sidecar["chip_size"]) == ("clay-v1.5", "sentinel-2-l2a", 64)
        assert "clay.plan" in checked or any("clay.plan is not checked" in note for note in report.notes)
    else:
        assert any("no clay.plan" in note for note in report.notes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sensor", "sentinel-2-l2a"], "--sensor exports Clay v1.5: name its checkpoint"),
        (["--chip-size", "128"], "--chip-size and --conventions apply to Clay v1.5 exports only"),
        (["--sensor", "sentinel-2-l2a", "--random-weights", "--chip-size", "100"], "--chip-size 100: must be a positive multiple"),
    ],
)
def test_options_that_do_not_apply_are_refused_not_ignored(tmp_path, args, message):
    out = tmp_path / "out"
    assert_refused(clay_export("--out", str(out), *args), out, message)


def test_the_python_api_embeds_chips_with_a_v15_engine_folder(engine):
    """One runtime contract: ClayEmbedder.embed(pixels, lonlat, dates) on a v1.5 export folder gives
    what its fp32 artifact gives, and refuses v0-shaped chips in one line."""
    from clay.runtime.api import ClayEmbedder

    pixels, lonlat, date = make_chips(2, seed=8, size=256)
    with ClayEmbedder(engine, backend="onnx-cpu") as embedder:
        assert (embedder.metadata.model, embedder.metadata.sensor) == ("clay-v1.5", "sentinel-2-l2a")
        chips, patches = embedder.embed(pixels[:, :10], lonlat, date, patch_embeddings=True)
        with pytest.raises(ValueError, match=r"pixels must be \[B, 10, 256, 256\]"):
            embedder.embed(make_chips(1, size=512)[0][:, :10], lonlat[:1], date[:1])
    fp32 = run(engine / "sentinel-2-l2a" / "clay.onnx", pixels[:, :10], lonlat, date)[0]
    assert chips.shape == (2, 192) and patches.shape == (2, 1, 32, 32, 192)
    assert cosine(chips, fp32).min() >= 0.99  # the folder's onnx-cpu artifact is the int8 one


def test_a_triton_repository_holds_one_model_per_sensor(v15_ckpt, tmp_path):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    repository = tmp_path / "repo"
    export_artifacts(ExportOptions(out=tmp_path / "engine", checkpoint=v15_ckpt, sensors=("sentinel-2-l2a", "sentinel-1-rtc"),
                                   chip_size=64, check=False, triton_repository=repository), log=lambda _: None)  # fmt: skip
    assert sorted(p.name for p in repository.iterdir()) == ["clay_v1_5_sentinel_1_rtc_onnx", "clay_v1_5_sentinel_2_l2a_onnx"]
    folder = repository / "clay_v1_5_sentinel_1_rtc_onnx"
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "engine" / "sentinel-1-rtc" / "clay.onnx").read_bytes()
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "clay_v1_5_sentinel_1_rtc_onnx"
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixels", [2, 64, 64]), ("lonlat", [2]), ("date", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("embedding", [192])]


def test_a_scene_without_the_engines_sensor_bands_is_one_line(engine, tmp_path):
    """A Landsat v1.5 engine on S2 files: refused in one line saying the band names are Sentinel-2's
    (B02-B07 are Landsat's numbers too, but B08-B12 are not), without v0's --groups hint (which
    would export a v0 engine); an unnamed 13-band stack is not taken as the engine's bands."""
    from clay.training.synthetic import write_scene

    named = write_scene(tmp_path / "named.tif", 64, 64, seed=1)
    unnamed = write_scene(tmp_path / "unnamed.tif", 64, 64, seed=1, band_descriptions=False)
    for scene, message in ((named, "a sentinel-2-l2a scene (band names B02, B03"),
                           (unnamed, "13 bands without band descriptions; this engine's bands (red, green")):
        result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(scene), "--engine",
                                 str(engine / "landsat-c2l2-sr"), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"clay-run: {scene}") and message in last and "--groups" not in last, last


def test_clay_serve_answers_with_a_v15_engine_like_the_artifact(engine):
    """clay-serve on a v1.5 export folder: the Open Inference Protocol model declares 256-px chips of
    the sensor's 10 bands and answers what the folder's onnx-cpu artifact answers."""
    import importlib.util
    import urllib.request

    th = pytest.importorskip("tritonclient.http")
    if importlib.util.find_spec("kserve") is None:  # not imported here: its protos clash with tritonclient.grpc's
        pytest.skip("clay-serve needs the serve extra")

    from clay.benchmarks.serve_load import running_server

    pixels, lonlat, date = make_chips(2, seed=9, size=256)
    pixels = np.ascontiguousarray(pixels[:, :10])
    expected = run(engine / "sentinel-2-l2a" / "clay.int8.onnx", pixels, lonlat, date)[0]
    with running_server(engine, "--backend", "onnx-cpu", "--max-batch", "2") as server:
        with urllib.request.urlopen(f"http://{server['http']}/v2/models/clay") as answer:
            declared = json.load(answer)
        client = th.InferenceServerClient(server["http"], network_timeout=120)
        inputs = []
        for name, array in (("pixels", pixels), ("lonlat", lonlat), ("date", date)):
            tensor = th.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        got = client.infer("clay", inputs, outputs=[th.InferRequestedOutput("embedding", binary_data=True)]).as_numpy("embedding")
    assert declared["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": [-1, 10, 256, 256]}
    assert [(o["name"], o["shape"]) for o in declared["outputs"]] == [("embedding", [-1, 192]), ("patch_embeddings", [-1, 1, 32, 32, 192])]
    assert cosine(got, expected).min() >= 0.99999
