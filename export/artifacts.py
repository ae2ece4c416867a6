"""Export orchestration: one call writes every requested format of the table, checked.

Artifacts are written into a staging folder inside the output directory and moved into place only
when all of them are built and checked, so a failed or interrupted export never leaves a file that
looks finished.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from clay.runtime.bands import BAND_MEANS, BAND_STDS, CHIP_SIZE, GROUP_NAMES, PATCH_SIZE, bands_of_groups
from clay.runtime.formats import ArtifactFormat
from clay.runtime.metadata import EngineMetadata, package_versions
from clay.runtime.resampling import CLAY_V0 as CLAY_V0_RESAMPLING
from clay.runtime.resampling import RUNTIME_READER, check_resampling
from clay.training.checkpoint import (
    DEMO_GROUPS,
    DEMO_WEIGHTS,
    CheckpointError,
    file_sha256,
    load_clay_mae,
    read_checkpoint_file,
)
from clay.training.checkpoint_v15 import (
    CLAY_V0,
    CLAY_V15,
    LEAST_TRUST_NOTE,
    load_encoder_v15,
    model_state,
    read_least_trust,
    which_model,
)
from clay.training.model import ClayMAE, random_clay_mae
from clay.training.model_v15 import V15_SIZES, EncoderV15, random_encoder_v15
from clay.training.sizes import get_size

from . import check
from .builders import BuildJob
from .common import ExportError, ExportReport, RefusedInput, check_built, staging_dir
from .common import build_formats as _build
from .onnx_export import INPUT_NAMES
from .options import ExportOptions

logger = logging.getLogger(__name__)


def resolve_weights(options: ExportOptions) -> ExportOptions:
    """Without --checkpoint (and without --random-weights), the bundled demo weights, and by default
    the band groups they were trained on. A checkpoint's default groups are read with its weights
    (:func:`default_groups`)."""
    if options.checkpoint is not None:
        return options
    if options.random_weights:
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
    return CLAY_V0_RESAMPLING, "Clay v0's datacubes: stackstac.stack's default"


def trained_groups(stored: object) -> tuple[str, ...] | None:
    """The band groups a checkpoint's weights were trained on, where it records them: the
    ``groups`` hyper-parameter of clay-train's checkpoints (``None`` there: all six) and of the demo
    weights. ``None`` when it is not recorded (the published Clay v0 file, bare state dicts)."""
    hyper = stored.get("hyper_parameters") if isinstance(stored, dict) else None
    if not isinstance(hyper, dict) or "groups" not in hyper:
        return None
    return tuple(hyper["groups"] or GROUP_NAMES)


def default_groups(options: ExportOptions, trained: tuple[str, ...] | None) -> tuple[ExportOptions, str]:
    """The groups to export where --groups was not given: those the checkpoint records it was trained
    on (clay-train's checkpoints), else all six (the published Clay v0 file records none and was
    trained on all 13 bands); and the line that says which was used and why."""
    if trained is not None:
        return (replace(options, groups=trained),
                f"groups: {','.join(trained)}, the groups the checkpoint was trained on (--groups to choose others)")  # fmt: skip
    return (replace(options, groups=GROUP_NAMES),
            "groups: all six (13 bands): the checkpoint does not record its groups, as the published Clay v0 "
            "file, which was trained on all of them (--groups to choose)")  # fmt: skip


def export_summary(model: ClayMAE, options: ExportOptions, weights: str, sha: str,
                   trained: tuple[str, ...] | None,
                   resampling: tuple[str, str] | None = None) -> tuple[list[str], list[str]]:  # fmt: skip
    """What an export holds, in lines for the user (weights, bands, groups, outputs), and warnings:
    band groups the weights were never trained on embed through untrained (initial) weights."""
    bands = check.band_names(options.groups)
    outputs = f"embedding [B, {model.size.dim}]"
    if options.patch_embeddings:
        outputs += f" and patch_embeddings [B, {len(options.groups)}, 16, 16, {model.size.dim}]"
    # where the groups are the ones trained on (the default), clay-export has said so with the groups:
    # the same list again read as a second fact
    same = trained is not None and tuple(trained) == tuple(options.groups)
    lines = [
        f"weights: {weights} (Clay '{model.size.name}'" + (f", sha256 {sha[:12]}…)" if sha else ")"),
        f"input: {len(bands)} bands ({' '.join(bands)}) in groups {', '.join(options.groups)}; output: {outputs}",
    ]
    if not same:
        lines.append("trained on groups: " + (", ".join(trained) if trained is not None else "not recorded in the checkpoint"))
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


def which_clay(options: ExportOptions) -> tuple[str, object | None]:
    """Which Clay the export is for: ``("clay-v1.5", stored checkpoint or None for random weights)``
    or ``("clay-v0", None)`` (v0 reads its checkpoint itself, as it always did). A checkpoint of Clay
    weights of neither kind is :class:`RefusedInput`; a file that cannot be read goes the v0 way, whose
    errors say so."""
    if options.checkpoint is None:
        if options.random_weights and options.sensors:
            return CLAY_V15, None
        if options.sensors:
            raise RefusedInput("--sensor exports Clay v1.5: name its checkpoint (--checkpoint clay-v1.5.ckpt), "
                               "or add --random-weights for a random v1.5 encoder")  # fmt: skip
        _refuse_v15_options_for_v0(options)
        return CLAY_V0, None
    try:
        stored, fell_back = read_least_trust(options.checkpoint)
        state = model_state(stored)
    except CheckpointError:
        return CLAY_V0, None
    which = which_model(state)
    if which is None:
        shown = ", ".join(list(state)[:3]) or "no weight tensors"
        raise RefusedInput(f"{options.checkpoint}: neither a Clay v0 nor a Clay v1.5 checkpoint (its weights: {shown}…)")
    if which == CLAY_V0:
        if options.sensors:
            raise RefusedInput(f"{options.checkpoint}: a Clay v0 checkpoint; --sensor is for Clay v1.5 (v0 takes --groups)")
        _refuse_v15_options_for_v0(options)
        return CLAY_V0, None
    if fell_back:
        logger.warning("%s: %s", options.checkpoint, LEAST_TRUST_NOTE)
    return CLAY_V15, stored


def _refuse_v15_options_for_v0(options: ExportOptions) -> None:
    """--chip-size and --conventions are Clay v1.5's; a v0 export would ignore them silently."""
    if options.chip_size is not None or options.convention != "training":
        raise RefusedInput("--chip-size and --conventions apply to Clay v1.5 exports only (Clay v0 engines take "
                           "512-px chips and v0's own encodings)")  # fmt: skip


def load_v15(options: ExportOptions, stored: object | None) -> tuple[EncoderV15, str, str, str]:
    """The v1.5 encoder and its provenance (checkpoint label, sha256, weights description)."""
    if stored is None:
        size = options.size or "tiny"
        if size not in V15_SIZES:
            raise RefusedInput(f"--size {size}: Clay v1.5 has {', '.join(V15_SIZES)}")
        return (random_encoder_v15(size, seed=0), "", "",
                f"random initialisation (seed 0) of Clay v1.5 '{size}': for speed tests only, not a trained model")  # fmt: skip
    try:
        encoder = load_encoder_v15(options.checkpoint, stored)
    except CheckpointError as exc:
        raise RefusedInput(str(exc)) from None
    if options.size is not None and options.size != encoder.size.name:
        raise RefusedInput(f"--size {options.size} was asked for, but the weights are Clay v1.5 '{encoder.size.name}'")
    return encoder, options.checkpoint.name, file_sha256(options.checkpoint), f"Clay v1.5 checkpoint {options.checkpoint.name}"


def export_artifacts(options: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    """Build, check and publish every requested format; raises :class:`ExportError`."""
    which, stored = which_clay(options)
    if which == CLAY_V15:
        from .v15 import export_v15

        encoder, checkpoint, sha, weights = load_v15(options, stored)
        del stored  # the decoder and teacher tensors (memory-mapped) are not needed any more
        return export_v15(options, encoder, checkpoint, sha, weights, log)
    report = ExportReport()
    options = resolve_weights(options)
    model, checkpoint, sha, weights, trained, resampling = load_model(options)
    groups_line = ""
    if not options.groups:  # a checkpoint without --groups
        options, groups_line = default_groups(options, trained)
    report.summary, report.notes = export_summary(model, options, weights, sha, trained, resampling)
    if groups_line:
        report.summary.append(groups_line)
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


def _check(job: BuildJob, built: list[tuple[Path, ArtifactFormat]], report: ExportReport) -> None:
    """Polygraphy runs every built artifact on the same chips; any chip below its format's bound fails the export."""
    groups = job.options.groups
    feeds = check.check_feeds(groups)
    check_built(job, built, feeds, check.eager_reference(job.encoder, groups, feeds, job.options.patch_embeddings), report)

