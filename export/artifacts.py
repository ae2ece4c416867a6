"""Export orchestration: one call writes every requested format of the table, checked.

Artifacts are written into a staging folder inside the output directory and moved into place only
when all of them are built and checked, so a failed or interrupted export never leaves a file that
looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from clay.runtime.bands import BAND_MEANS, BAND_STDS, CHIP_SIZE, GROUP_NAMES, PATCH_SIZE, bands_of_groups
from clay.runtime.formats import ArtifactFormat
from clay.runtime.metadata import EngineMetadata, package_versions
from clay.runtime.resampling import CLAY_V0, RUNTIME_READER, check_resampling
from clay.training.checkpoint import (
    DEMO_GROUPS,
    DEMO_WEIGHTS,
    CheckpointError,
    file_sha256,
    load_clay_mae,
    read_checkpoint_file,
)
from clay.training.model import ClayMAE, random_clay_mae
from clay.training.sizes import get_size

from . import check
from .builders import BUILDERS, BuildJob, FormatUnavailable
from .onnx_export import INPUT_NAMES
from .options import ExportOptions
from .tensorrt_build import PlanBuildError


class ExportError(RuntimeError):
    """A one-line reason why the export could not be done."""


@dataclass
class ExportReport:
    artifacts: list[Path] = field(default_factory=list)
    scores: list[check.OutputScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # what was exported: weights, bands, groups, outputs


def resolve_weights(options: ExportOptions) -> ExportOptions:
    """Without --checkpoint (and without --random-weights), the bundled demo weights, and by default
    the band groups they were trained on."""
    if options.checkpoint is not None or options.random_weights:
        return replace(options, groups=options.groups or GROUP_NAMES)
    if not DEMO_WEIGHTS.is_file():
        raise ExportError(f"no --checkpoint given and the demo weights {DEMO_WEIGHTS} are not installed")
    return replace(options, checkpoint=DEMO_WEIGHTS, groups=options.groups or DEMO_GROUPS)


def load_model(options: ExportOptions) -> tuple[ClayMAE, str, str, str, tuple[str, ...] | None, tuple[str, str]]:
    """The model to export and its provenance: (model, checkpoint label, sha256, weights description,
    the band groups the weights were trained on, or ``None`` where the checkpoint does not say, and
    the resampling they expect with why, :func:`trained_resampling`)."""
    if options.checkpoint is not None:
        try:
            model = load_clay_mae(options.checkpoint, options.size)
            stored = read_checkpoint_file(options.checkpoint)
        except CheckpointError as exc:
            raise ExportError(str(exc)) from None
        description = stored.get("description") if isinstance(stored.get("description"), str) else None
        return (model, options.checkpoint.name, file_sha256(options.checkpoint),
                description or f"checkpoint {options.checkpoint.name}", trained_groups(stored),
                trained_resampling(stored, options.resampling))  # fmt: skip
    size = get_size(options.size or "tiny").name
    return (random_clay_mae(size, seed=0), "", "",
            f"random initialisation (seed 0) of '{size}': for speed tests only, not a trained model", None,
            trained_resampling(None, options.resampling))  # fmt: skip


def trained_resampling(stored: object, override: str | None = None) -> tuple[str, str]:
    """The resampling the weights saw bands brought onto the chip grid with (``nearest`` or
    ``bilinear``, see :mod:`clay.runtime.resampling` for the sources) and why, for the engine
    metadata: ``clay-export --resampling`` when given; else what the checkpoint records
    (``hyper_parameters.resampling``); else ``bilinear`` for weights trained through this runtime's
    reader (the demo weights and clay-train's checkpoints, which record their ``groups``); else
    (the published Clay v0 file, bare state dicts, random weights) Clay v0's ``nearest``.
    Raises :class:`ExportError` for a recorded value this runtime cannot read."""
    if override is not None:
        return override, "--resampling"
    hyper = stored.get("hyper_parameters") if isinstance(stored, dict) else None
    if isinstance(hyper, dict) and hyper.get("resampling") is not None:
        try:
            check_resampling(hyper["resampling"], "the checkpoint's resampling")
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        return hyper["resampling"], "recorded in the checkpoint"
    if trained_groups(stored) is not None:
        return RUNTIME_READER, "trained through this runtime's reader (demo weights, clay-train)"
    return CLAY_V0, "Clay v0's datacubes: stackstac.stack's default"


def trained_groups(stored: object) -> tuple[str, ...] | None:
    """The band groups a checkpoint's weights were trained on, where it records them: the
    ``groups`` hyper-parameter of clay-train's checkpoints (``None`` there: all six) and of the demo
    weights. ``None`` when it is not recorded (the published Clay v0 file, bare state dicts)."""
    hyper = stored.get("hyper_parameters") if isinstance(stored, dict) else None
    if not isinstance(hyper, dict) or "groups" not in hyper:
        return None
    return tuple(hyper["groups"] or GROUP_NAMES)


def export_summary(model: ClayMAE, options: ExportOptions, weights: str, sha: str,
                   trained: tuple[str, ...] | None,
                   resampling: tuple[str, str] | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """What an export holds, in lines for the user (weights, bands, groups, outputs), and warnings:
    band groups the weights were never trained on embed through untrained (initial) weights."""
    bands = check.band_names(options.groups)
    outputs = f"embedding [B, {model.size.dim}]"
    if options.patch_embeddings:
        outputs += f" and patch_embeddings [B, {len(options.groups)}, 16, 16, {model.size.dim}]"
    lines = [
        f"weights: {weights} (Clay '{model.size.name}'" + (f", sha256 {sha[:12]}…)" if sha else ")"),
        f"input: {len(bands)} bands ({' '.join(bands)}) in groups {', '.join(options.groups)}; output: {outputs}",
        "trained on groups: " + (", ".join(trained) if trained is not None else "not recorded in the checkpoint"),
    ]
    if resampling is not None:
        lines.append(f"resampling the weights expect: {resampling[0]} ({resampling[1]}); clay-run reads with it "
                     "unless --resampling says otherwise")  # fmt: skip
    never = [g for g in options.groups if trained is not None and g not in trained]
    warnings = [f"warning: the weights were never trained on {', '.join(never)} (only on {', '.join(trained)}): "
                "their patch embeddings are still the random initialisation, so what the engine makes of those "
                "bands means little; leave them out with --groups"] if never else []  # fmt: skip
    return lines, warnings


def make_metadata(model: ClayMAE, options: ExportOptions, precision: str, checkpoint: str, sha: str, weights: str,
                  resampling: str | None = None) -> EngineMetadata:  # fmt: skip
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
        resampling=resampling,
    )


def staging_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".clay-export-", dir=out))
    except OSError as exc:
        raise ExportError(f"{out}: cannot write there ({exc.strerror or exc})") from None


def export_artifacts(options: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    """Build, check and publish every requested format; raises :class:`ExportError`."""
    report = ExportReport()
    options = resolve_weights(options)
    model, checkpoint, sha, weights, trained, resampling = load_model(options)
    report.summary, report.notes = export_summary(model, options, weights, sha, trained, resampling)
    stage = staging_dir(options.out)
    try:
        job = BuildJob(model.encoder, options, stage, lambda fmt: make_metadata(model, options, fmt.precision, checkpoint, sha, weights, resampling[0]),
                       log, report.seconds)  # fmt: skip
        built = _build(job, options.formats, report)
        if options.check:
            _check(job, built, report)
        for path in report.artifacts:
            os.replace(path, options.out / path.name)
        report.artifacts = [options.out / p.name for p in report.artifacts]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if options.triton_repository is not None:
        from .triton import write_repository

        try:
            report.artifacts += write_repository(options.out, options.triton_repository, options.batch, report.notes.append)
        except OSError as exc:
            raise ExportError(f"{options.triton_repository}: cannot write the Triton repository ({exc.strerror or exc})") from None
    return report


def _build(job: BuildJob, formats: tuple[ArtifactFormat, ...], report: ExportReport) -> list[tuple[Path, ArtifactFormat]]:
    """Every format in table order (a format may read an earlier one's file); the unavailable ones
    become a note saying what to install (then the same command builds them)."""
    built = []
    for fmt in formats:
        try:
            written = BUILDERS[fmt.name](job, fmt)
        except FormatUnavailable as reason:
            report.notes.append(f"no {fmt.file_name}: {reason}; the other artifacts are kept")
            continue
        except PlanBuildError as exc:
            raise ExportError(f"{fmt.file_name}: {exc}") from None
        built.append((written[0], fmt))
        report.artifacts += written
    return built


def _check(job: BuildJob, built: list[tuple[Path, ArtifactFormat]], report: ExportReport) -> None:
    """Polygraphy runs every built artifact on the same chips; any chip below its format's bound fails the export."""
    groups = job.options.groups
    feeds = check.check_feeds(groups)
    expected = check.eager_reference(job.encoder, groups, feeds, job.options.patch_embeddings)
    for path, fmt in built:
        skipped = check.unchecked_reason(path, fmt)
        if skipped:
            report.notes.append(f"{path.name} is not checked against eager fp32 here: {skipped}")
            continue
        scores = check.check_artifact(path, fmt, feeds, expected)
        report.scores.extend(scores)
        for s in scores:
            job.log(s.line())
    failed = [s for s in report.scores if not s.passed]
    if failed:
        worst = failed[0]
        raise ExportError(
            f"{worst.artifact} {worst.output}: min cosine {worst.min_cosine:.6f} is below {worst.bound}"
            + ("" if worst.finite else " (non-finite values)") + "; nothing was written"
        )

