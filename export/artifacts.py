"""Export orchestration: one call writes every requested artifact into a directory, checked.

Artifacts are written into a staging folder inside the output directory and moved into place only
when all of them are built and checked, so a failed or interrupted export never leaves a file that
looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from clay.runtime.metadata import EngineMetadata, package_versions
from clay.training.bands import BAND_MEANS, BAND_STDS, CHIP_SIZE, GROUP_NAMES, PATCH_SIZE, bands_of_groups
from clay.training.checkpoint import CheckpointError, file_sha256, load_clay_mae, read_checkpoint_file
from clay.training.demo import DEMO_GROUPS, WEIGHTS as DEMO_WEIGHTS
from clay.training.model import ClayMAE, get_size

from . import check
from .graph import InferenceEncoder
from .onnx_export import INPUT_NAMES, export_onnx
from .tensorrt_build import BatchProfile, build_plan, gpu_name, tensorrt_unavailable_reason

FP32_NAME, FP16_NAME, INT8_NAME, PLAN_NAME = "clay.onnx", "clay.fp16.onnx", "clay.int8.onnx", "clay.plan"


class ExportError(RuntimeError):
    """A one-line reason why the export could not be done."""


@dataclass
class ExportOptions:
    out: Path = Path(".")
    checkpoint: Path | None = None
    size: str | None = None
    random_weights: bool = False
    groups: tuple[str, ...] = ()
    fp16: bool = False
    int8_cpu: bool = False
    patch_embeddings: bool = False
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 32))
    hardware_compat: str | None = None
    timing_cache: Path | None = None
    check: bool = True


@dataclass
class ExportReport:
    artifacts: list[Path] = field(default_factory=list)
    scores: list[check.OutputScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_weights(options: ExportOptions) -> ExportOptions:
    """Without --checkpoint (and without --random-weights), the bundled demo weights, and by default
    the band groups they were trained on."""
    if options.checkpoint is not None or options.random_weights:
        return replace(options, groups=options.groups or GROUP_NAMES)
    if not DEMO_WEIGHTS.is_file():
        raise ExportError(f"no --checkpoint given and the demo weights {DEMO_WEIGHTS} are not installed")
    return replace(options, checkpoint=DEMO_WEIGHTS, groups=options.groups or DEMO_GROUPS)


def load_model(options: ExportOptions) -> tuple[ClayMAE, str, str, str]:
    """The model to export and its provenance: (model, checkpoint label, sha256, weights description)."""
    if options.checkpoint is not None:
        try:
            model = load_clay_mae(options.checkpoint, options.size)
            stored = read_checkpoint_file(options.checkpoint)
        except CheckpointError as exc:
            raise ExportError(str(exc)) from None
        description = stored.get("description") if isinstance(stored.get("description"), str) else None
        return (model, options.checkpoint.name, file_sha256(options.checkpoint),
                description or f"checkpoint {options.checkpoint.name}")  # fmt: skip
    torch.manual_seed(0)
    size = get_size(options.size or "tiny").name
    return ClayMAE(size).eval(), "", "", f"random initialisation (seed 0) of '{size}': for speed tests only, not a trained model"


def make_metadata(model: ClayMAE, options: ExportOptions, precision: str, checkpoint: str, sha: str, weights: str) -> EngineMetadata:
    bands = bands_of_groups(options.groups)
    outputs = ("embedding", "patch_embeddings") if options.patch_embeddings else ("embedding",)
    return EngineMetadata(
        model_size=model.size.name,
        dim=model.size.dim,
        chip_size=CHIP_SIZE,
        patch_size=PATCH_SIZE,
        bands=check.band_names(options.groups),
        groups=tuple(options.groups),
        band_means=tuple(BAND_MEANS[b] for b in bands),
        band_stds=tuple(BAND_STDS[b] for b in bands),
        inputs=INPUT_NAMES,
        outputs=outputs,
        precision=precision,
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        weights=weights,
        exporter=f"clay-export {package_versions().get('clay-runtime', '')}".strip(),
        versions=package_versions(),
    )


def staging_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".clay-export-", dir=out))
    except OSError as exc:
        raise ExportError(f"{out}: cannot write there ({exc.strerror or exc})") from None


def export_artifacts(options: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    """Build, check and publish every requested artifact; raises :class:`ExportError`."""
    report = ExportReport()
    options = resolve_weights(options)
    model, checkpoint, sha, weights = load_model(options)
    stage = staging_dir(options.out)
    try:
        _build(model, options, stage, report, log, (checkpoint, sha, weights))
        for path in report.artifacts:
            os.replace(path, options.out / path.name)
        report.artifacts = [options.out / p.name for p in report.artifacts]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _timed(report: ExportReport, label: str, log: Callable[[str], None], func, *args):
    start = time.perf_counter()
    result = func(*args)
    report.seconds[label] = time.perf_counter() - start
    log(f"{label}: {report.seconds[label]:.1f} s")
    return result


def _build(model, options: ExportOptions, stage: Path, report: ExportReport, log, provenance) -> None:
    encoder, groups = model.encoder, options.groups
    built: list[tuple[Path, str]] = []

    def metadata(precision: str) -> EngineMetadata:
        return make_metadata(model, options, precision, *provenance)

    fp32 = stage / FP32_NAME
    _timed(report, f"exported {FP32_NAME}", log, export_onnx,
           InferenceEncoder(encoder, groups, options.patch_embeddings), fp32, metadata("fp32"))  # fmt: skip
    built.append((fp32, "fp32"))
    if options.fp16:
        fp16 = stage / FP16_NAME
        _timed(report, f"exported {FP16_NAME}", log, export_onnx,
               InferenceEncoder(encoder, groups, options.patch_embeddings, half=True), fp16, metadata("fp16"))  # fmt: skip
        built.append((fp16, "fp16"))
    if options.int8_cpu:
        from .int8 import quantize_int8

        # The CPU artifact starts from a graph whose attention is ONNX Runtime's fused kernel.
        fused = stage / "clay.fused-attention.onnx"
        export_onnx(InferenceEncoder(encoder, groups, options.patch_embeddings, fused_attention=True), fused, metadata("int8"))
        int8 = stage / INT8_NAME
        _timed(report, f"quantised {INT8_NAME}", log, quantize_int8, fused, int8, metadata("int8"))
        built.append((int8, "int8"))
    if options.fp16:
        reason = tensorrt_unavailable_reason()
        if reason:
            report.notes.append(
                f"no {PLAN_NAME}: {reason}; the ONNX artifacts are kept. On a GPU machine with TensorRT, run: "
                + rerun_command(options)
            )
        else:
            plan = stage / PLAN_NAME
            trt_version = _timed(
                report, f"built {PLAN_NAME}", log, build_plan, stage / FP16_NAME, plan,
                len(bands_of_groups(groups)), CHIP_SIZE, options.batch, options.timing_cache, options.hardware_compat,
            )  # fmt: skip
            extra = {"tensorrt": trt_version, "gpu": gpu_name(), "batch_profile": str(options.batch),
                     "hardware_compat": options.hardware_compat or "none"}  # fmt: skip
            sidecar = stage / (PLAN_NAME + ".json")
            sidecar.write_text(json.dumps(replace(metadata("fp16"), extra=extra).to_dict(), indent=2))
            built.append((plan, "fp16"))
            report.artifacts.append(sidecar)
    if options.check:
        feeds = check.check_feeds(groups)
        expected = check.eager_reference(encoder, groups, feeds, options.patch_embeddings)
        for path, precision in built:
            scores = _timed(report, f"checked {path.name}", log, check.check_artifact, path, precision, feeds, expected)
            report.scores.extend(scores)
            for s in scores:
                log(s.line())
        failed = [s for s in report.scores if not s.passed]
        if failed:
            worst = failed[0]
            raise ExportError(
                f"{worst.artifact} {worst.output}: min cosine {worst.min_cosine:.6f} is below {worst.bound}"
                + ("" if worst.finite else " (non-finite values)") + "; nothing was written"
            )
    report.artifacts = [p for p, _ in built] + report.artifacts


def rerun_command(options: ExportOptions) -> str:
    parts = ["clay-export", "--fp16", "--out", str(options.out), "--batch", str(options.batch)]
    if options.checkpoint:
        parts += ["--checkpoint", str(options.checkpoint)]
    elif options.random_weights:
        parts += ["--random-weights", "--size", options.size or "tiny"]
    if options.groups and len(options.groups) < 6:
        parts += ["--groups", ",".join(options.groups)]
    if options.patch_embeddings:
        parts.append("--patch-embeddings")
    if options.hardware_compat:
        parts += ["--hardware-compat", options.hardware_compat]
    return " ".join(parts)
