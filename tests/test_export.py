"""clay-export: the fp32/fp16/int8 ONNX graphs against eager PyTorch, metadata, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [export] extra")
onnx = pytest.importorskip("onnx", reason="export tests need the [export] extra")
ort = pytest.importorskip("onnxruntime")

from clay.export import check  # noqa: E402
from clay.export.artifacts import ExportError, ExportOptions, export_artifacts  # noqa: E402
from clay.export.onnx_export import graph_op_types, read_metadata  # noqa: E402
from clay.export.tensorrt_build import BatchProfile  # noqa: E402
from clay.runtime.bands import GROUP_NAMES, bands_of_groups  # noqa: E402
from clay.training.model import ClayMAE, normalise  # noqa: E402
from clay.training.synthetic import make_chips  # noqa: E402

from .conftest import trained_like_tiny  # noqa: E402

S2_GROUPS = ("rgb", "rededge", "nir", "swir")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    options = ExportOptions(out=out, checkpoint=checkpoint, groups=GROUP_NAMES, fp16=True, int8_cpu=True,
                            patch_embeddings=True)  # fmt: skip
    report = export_artifacts(options, log=lambda _: None)
    assert all(s.passed for s in report.scores)
    return out


def run(path: Path, pixels, lonlat, date):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels, "lonlat": lonlat, "date": date})


def eager(model: ClayMAE, pixels, lonlat, date, groups=GROUP_NAMES):
    bands = bands_of_groups(groups)
    with torch.no_grad():
        chip, patches = model.encoder.embed(
            normalise(torch.from_numpy(pixels), bands), torch.from_numpy(lonlat), torch.from_numpy(date), groups, True
        )
    return chip.numpy(), patches.numpy()


def test_fp32_onnx_equals_eager_with_explicit_normalisation(exported, checkpoint):
    model = trained_like_tiny()
    pixels, lonlat, date = make_chips(3, seed=11)
    chip, patches = run(exported / "clay.onnx", pixels, lonlat, date)
    ref_chip, ref_patches = eager(model, pixels, lonlat, date)
    assert np.abs(chip - ref_chip).max() <= 1e-4
    assert check.cosine_per_chip(chip, ref_chip).min() >= 0.99999
    assert check.cosine_per_chip(patches, ref_patches).min() >= 0.99999
    assert patches.shape == (3, 6, 16, 16, 256)


def test_normalisation_is_folded_not_computed_on_pixels(exported):
    model = onnx.load(str(exported / "clay.onnx"))
    consumers = [n.op_type for n in model.graph.node if "pixels" in n.input]
    assert set(consumers) <= {"Gather", "Slice"}, consumers  # channel selection, straight into Conv
    ops = graph_op_types(exported / "clay.onnx")
    assert "LayerNormalization" in ops and "Conv" in ops
    assert not ops & {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "TopK", "ArgMax"}
    assert model.opset_import[0].version >= 17


def test_fp16_graph_meets_its_bound_and_stays_finite_on_plausible_extremes(exported):
    model = trained_like_tiny()
    feeds = check.check_feeds(GROUP_NAMES, count=2)
    pixels = np.concatenate([f["pixels"] for f in feeds])
    lonlat = np.concatenate([f["lonlat"] for f in feeds])
    date = np.concatenate([f["date"] for f in feeds])
    assert pixels.max() == 65535 and pixels[:, 10:12].max() == 1000 and pixels[:, 12].min() == -500
    chip, patches = run(exported / "clay.fp16.onnx", pixels, lonlat, date)
    ref_chip, _ = eager(model, pixels, lonlat, date)
    assert np.isfinite(chip).all() and np.isfinite(patches).all()
    assert check.cosine_per_chip(chip, ref_chip).min() >= 0.999
    weights = onnx.load(str(exported / "clay.fp16.onnx")).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


def test_int8_meets_its_bound(exported):
    model = trained_like_tiny()
    pixels, lonlat, date = make_chips(2, seed=12)
    chip, _ = run(exported / "clay.int8.onnx", pixels, lonlat, date)
    ref_chip, _ = eager(model, pixels, lonlat, date)
    assert check.cosine_per_chip(chip, ref_chip).min() >= 0.99
    ops = graph_op_types(exported / "clay.int8.onnx")
    assert "MatMulInteger" in ops and "MultiHeadAttention" in ops
    assert "MultiHeadAttention" not in graph_op_types(exported / "clay.onnx")  # the portable graph stays plain


def test_cuda_artifact_fuses_attention_and_layernorms_and_keeps_raw_inputs_in_float32(exported):
    """clay.cuda.onnx: ONNX Runtime's fused kernels, float16 blocks, float32 where raw values flow
    (65535 S2 DNs would be infinite in float16); it meets the fp16 bound on CPU too (test above)."""
    path = exported / "clay.cuda.onnx"
    ops = graph_op_types(path)
    assert {"MultiHeadAttention", "SkipLayerNormalization"} <= ops
    model = onnx.load(str(path))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {w.name: w.data_type for w in model.graph.initializer}
    assert convs and all(weights[n.input[1]] == onnx.TensorProto.FLOAT for n in convs)
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in model.graph.initializer) > 10
    model = trained_like_tiny()
    feeds = check.check_feeds(GROUP_NAMES, count=1)
    extreme = feeds[-1]
    (chip, _), (ref, _) = run(path, *extreme.values()), eager(model, *extreme.values())
    assert np.isfinite(chip).all() and check.cosine_per_chip(chip, ref).min() >= 0.999


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(exported, batch):
    pixels, lonlat, date = make_chips(batch, seed=batch, size=512)
    chip, patches = run(exported / "clay.onnx", pixels, lonlat, date)
    assert chip.shape == (batch, 256) and patches.shape[0] == batch


def test_metadata_round_trips(exported, checkpoint):
    from clay.training.checkpoint import file_sha256

    for name, precision in (("clay.onnx", "fp32"), ("clay.fp16.onnx", "fp16"), ("clay.int8.onnx", "int8")):
        meta = read_metadata(exported / name)
        assert meta.precision == precision
        assert meta.model_size == "tiny" and meta.dim == 256 and meta.chip_size == 512
        assert meta.bands[:3] == ("B02", "B03", "B04") and meta.bands[10:] == ("VH", "VV", "DEM")
        assert meta.band_means[0] == pytest.approx(1369.03) and meta.band_stds[-1] == pytest.approx(880.35)
        assert meta.outputs == ("embedding", "patch_embeddings") and meta.has_patch_embeddings
        assert meta.checkpoint_sha256 == file_sha256(checkpoint)
        assert "torch" in meta.versions and "onnx" in meta.versions
        assert meta.resampling == "nearest"  # a checkpoint in the published layout that records no groups: Clay v0


def test_s2_only_subset_engine_equals_eager_on_those_groups(checkpoint, tmp_path):
    options = ExportOptions(out=tmp_path, checkpoint=checkpoint, groups=S2_GROUPS, int8_cpu=True)
    export_artifacts(options, log=lambda _: None)
    meta = read_metadata(tmp_path / "clay.onnx")
    assert meta.groups == S2_GROUPS and len(meta.bands) == 10 and "VH" not in meta.bands
    pixels, lonlat, date = make_chips(2, seed=13)
    pixels = pixels[:, list(bands_of_groups(S2_GROUPS))]
    (chip,) = run(tmp_path / "clay.onnx", pixels, lonlat, date)
    ref_chip, _ = eager(trained_like_tiny(), pixels, lonlat, date, S2_GROUPS)
    assert check.cosine_per_chip(chip, ref_chip).min() >= 0.99999


def test_fidelity_gate_fails_an_artifact_below_its_bound_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    from dataclasses import replace

    from clay.runtime import formats

    strict = tuple(replace(f, cosine_bound=0.9999999) if f.name == "int8" else f for f in formats.FORMATS)
    monkeypatch.setattr(formats, "FORMATS", strict)
    options = ExportOptions(out=tmp_path, checkpoint=checkpoint, groups=GROUP_NAMES, int8_cpu=True)
    with pytest.raises(ExportError, match=r"clay.int8.onnx embedding: min cosine .* is below 0.9999999"):
        export_artifacts(options, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_batch_profile_parsing():
    assert BatchProfile.parse("1:8:32") == BatchProfile(1, 8, 32)
    for bad in ("0:8:32", "8:1:32", "1:8", "a:b:c"):
        with pytest.raises(ValueError, match="MIN:OPT:MAX"):
            BatchProfile.parse(bad)


def clay_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.export.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/nonexistent/clay.ckpt"], "no such checkpoint file"),
        (["--batch", "0:8:32"], "--batch 0:8:32: expected MIN:OPT:MAX"),
        (["--groups", "rgb,thermal"], "unknown band group(s) thermal"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = clay_export("--out", str(out), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or list(out.iterdir()) == []


def test_unfitting_checkpoint_and_unwritable_dir_are_one_line(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    del state["state_dict"]["model.encoder.time_embedding.bias"]
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    result = clay_export("--checkpoint", str(broken), "--out", str(tmp_path / "o"))
    assert result.returncode != 0 and "1 missing: encoder.time_embedding.bias" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = clay_export("--checkpoint", str(checkpoint), "--out", str(blocker / "sub"))
    assert result.returncode != 0 and "cannot write there" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_says_what_it_exported_and_warns_of_groups_the_weights_never_trained(tmp_path, checkpoint):
    """The demo weights were trained on the S2 groups and sar, never on dem: exporting dem warns; the
    summary names the weights, the bands and the groups. A checkpoint that records nothing (the
    published layout, here the test's tiny one without a groups hyper-parameter) gives no warning."""
    result = clay_export("--out", str(tmp_path / "demo"), "--groups", "rgb,dem", "--no-check")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("clay-export: ")]
    assert any(line.startswith("clay-export: weights: demo weights") and "Clay 'tiny'" in line for line in lines)
    assert "clay-export: input: 4 bands (B02 B03 B04 DEM) in groups rgb, dem; output: embedding [B, 256]" in lines
    assert "clay-export: trained on groups: rgb, rededge, nir, swir, sar" in lines
    assert any(line.startswith("clay-export: resampling the weights expect: bilinear (trained through this runtime's reader")
               for line in lines)  # fmt: skip
    assert read_metadata(tmp_path / "demo" / "clay.onnx").resampling == "bilinear"
    warnings = [line for line in lines if "warning: the weights were never trained on dem " in line]
    assert len(warnings) == 1 and "--groups" in warnings[0]
    result = clay_export("--checkpoint", str(checkpoint), "--out", str(tmp_path / "ckpt"), "--no-check")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert "clay-export: trained on groups: not recorded in the checkpoint" in result.stderr
    assert "clay-export: resampling the weights expect: nearest (Clay v0's datacubes: stackstac.stack's default)" in result.stderr
    assert read_metadata(tmp_path / "ckpt" / "clay.onnx").resampling == "nearest"
    result = clay_export("--checkpoint", str(checkpoint), "--out", str(tmp_path / "said"), "--no-check", "--resampling", "bilinear")
    assert result.returncode == 0 and "resampling the weights expect: bilinear (--resampling)" in result.stderr, result.stderr
    assert read_metadata(tmp_path / "said" / "clay.onnx").resampling == "bilinear"
