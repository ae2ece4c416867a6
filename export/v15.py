"""Exporting Clay v1.5: one artifact set per sensor, in ``<out>/<sensor>/``, checked like v0's.

Every sensor's files are built and checked in a staging folder inside ``out`` and moved into place
only when all sensors passed, so a failed export leaves no engine folder that looks finished. The
rows of the format table and their builders are v0's (``builders.py``); what differs is the module
they trace (:class:`~clay.export.graph_v15.InferenceEncoderV15`), the metadata, and the check's chips
and eager reference (the v1.5 encoder on explicitly normalised pixels, its 8 metadata values from
the Python reference :func:`clay.runtime.sensors.metadata_values`, so the in-graph ISO week and
lon/lat order are checked too).
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from clay.runtime.bands import BAND_NAMES, INPUT_UNITS
from clay.runtime.metadata import V15_FORMAT_VERSION, EngineMetadata, package_versions
from clay.runtime.resampling import CLAY_V15
from clay.runtime.sensors import (
    CONVENTION_HELP,
    CONVENTIONS,
    INPUT_RULES,
    SAR_DB,
    SAR_FLOOR,
    Sensor,
    metadata_values,
    sensor_spec,
)
from clay.training.model_v15 import CHIP_SIZE, EncoderV15
from clay.training.synthetic import make_chips

from .builders import BuildJob
from .common import ExportError, ExportReport, RefusedInput, check_built, staging_dir
from .common import build_formats as _build
from .graph_v15 import InferenceEncoderV15
from .onnx_export import INPUT_NAMES
from .options import ExportOptions

#: Largest value of a 16-bit optical product (S2/Landsat DNs) and of an 8-bit one (NAIP, LINZ):
#: the check's extreme chip.
_DN16_MAX, _DN8_MAX = 65535.0, 255.0
_EIGHT_BIT = frozenset({"naip", "linz"})


def v15_options_problem(options: ExportOptions) -> str | None:
    """Options that mean nothing for Clay v1.5, as a one-line reason (``None``: fine)."""
    if options.groups:
        return "--groups selects Clay v0's band groups; a Clay v1.5 engine takes a sensor's bands: use --sensor"
    chip = options.chip_size or CHIP_SIZE
    if chip <= 0 or chip % 8:
        return f"--chip-size {chip}: must be a positive multiple of the patch size 8"
    if options.convention not in CONVENTIONS:
        return f"--conventions {options.convention}: known: {', '.join(CONVENTIONS)}"
    return None


def preprocessing(sensor: Sensor, convention: str) -> dict:
    """What the engine does to its inputs, recorded in every artifact (and every output's metadata)."""
    return {
        "conventions": convention,
        "conventions_meaning": CONVENTION_HELP[convention],
        "location_values": "[sin lon, cos lon, sin lat, cos lat]" if convention == "training" else "[sin lat, cos lat, sin lon, cos lon]",
        "time_values": "[sin week, cos week, sin hour, cos hour], ISO week * 2pi/52, hour = 12 (noon)",
        "gsd_m": sensor.gsd,
        "normalisation": "(x - mean) / std per band, metadata.yaml constants, folded into the patch embedding",
        "sar_db": "10*log10(max(x, 1e-10) where x <= 0) in the graph" if sensor.name in SAR_DB else None,
    }  # fmt: skip


def make_metadata_v15(encoder: EncoderV15, sensor: Sensor, options: ExportOptions, precision: str,
                      checkpoint: str, sha: str, weights: str) -> EngineMetadata:  # fmt: skip
    outputs = ("embedding", "patch_embeddings") if options.patch_embeddings else ("embedding",)
    rule = INPUT_RULES[sensor.name]
    units = dict(INPUT_UNITS) if rule.v0_units else {"pixels": f"{rule.units} (as v1.5 was trained: {rule.source})"}
    return EngineMetadata(
        model_size=encoder.size.name,
        dim=encoder.dim,
        chip_size=options.chip_size or CHIP_SIZE,
        patch_size=encoder.patch_size,
        bands=sensor.bands,
        groups=(sensor.name,),  # one token group: all the sensor's bands (patch_embeddings' axis 1)
        band_means=sensor.means,
        band_stds=sensor.stds,
        inputs=INPUT_NAMES,
        outputs=outputs,
        precision=precision,
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        weights=weights,
        exporter=f"clay-export {package_versions().get('clay-runtime', '')}".strip(),
        versions=package_versions(),
        input_units=units,
        format_version=V15_FORMAT_VERSION,
        model="clay-v1.5",
        sensor=sensor.name,
        band_wavelengths=sensor.wavelengths,
        gsd=sensor.gsd,
        preprocessing=preprocessing(sensor, options.convention),
        resampling=options.resampling or CLAY_V15,  # stacchip's chipper: nearest (clay.runtime.resampling)
    )


def check_feeds_v15(sensor: Sensor, chip_size: int, count: int = 3, seed: int = 7) -> list[OrderedDict[str, np.ndarray]]:
    """Plausible raw chips of ``sensor`` plus one of physically plausible extremes (the sensor's
    largest DN on half the chip; SAR: linear power 1000 and 0, which the graph floors to 1e-10)."""
    pixels, lonlat, date = make_chips(count, seed=seed, size=chip_size)
    if all(b in BAND_NAMES for b in sensor.bands):  # S2 and S1 (a subset too): make_chips' realistic values
        raw = pixels[:, [BAND_NAMES.index(b) for b in sensor.bands]]
    else:
        rng = np.random.default_rng(seed)
        means, stds = np.asarray(sensor.means, np.float32), np.asarray(sensor.stds, np.float32)
        noise = rng.standard_normal((count, len(sensor.bands), chip_size, chip_size)).astype(np.float32)
        raw = np.maximum(means[None, :, None, None] + 0.5 * stds[None, :, None, None] * noise, 0)
    extreme = raw[:1].copy()
    if sensor.name in SAR_DB:
        extreme[:, :, : chip_size // 2] = 1000.0
        extreme[:, :, chip_size // 2 :, : chip_size // 2] = 0.0
    else:
        extreme[:, :, : chip_size // 2] = _DN8_MAX if sensor.name in _EIGHT_BIT else _DN16_MAX
    raw = np.concatenate([raw, extreme]).astype(np.float32)
    lonlat = np.concatenate([lonlat, lonlat[:1]])
    date = np.concatenate([date, date[:1]])
    return [OrderedDict(pixels=raw[i : i + 1], lonlat=lonlat[i : i + 1], date=date[i : i + 1]) for i in range(len(raw))]


def eager_reference_v15(encoder: EncoderV15, sensor: Sensor, convention: str, feeds, patch_embeddings: bool) -> list[dict]:
    """The v1.5 encoder in fp32 on explicitly normalised pixels with the Python reference's metadata
    values: what every artifact must reproduce."""
    mean = torch.tensor(sensor.means)[None, :, None, None]
    std = torch.tensor(sensor.stds)[None, :, None, None]
    results = []
    with torch.no_grad():
        for feed in feeds:
            pixels = torch.from_numpy(feed["pixels"]).double()
            if sensor.name in SAR_DB:
                pixels = 10 * torch.log10(torch.where(pixels > 0, pixels, torch.full_like(pixels, SAR_FLOOR)))
            cube = ((pixels - mean.double()) / std.double()).float()
            values = torch.tensor([
                metadata_values(float(lon), float(lat), datetime.date(int(y), int(m), int(d)), convention)
                for (lon, lat), (y, m, d) in zip(feed["lonlat"], feed["date"])
            ], dtype=torch.float32)  # fmt: skip
            tokens = encoder(cube, values[:, :4], values[:, 4:], sensor.wavelengths, sensor.gsd)
            outputs = {"embedding": tokens[:, 0].numpy()}
            if patch_embeddings:
                grid = cube.shape[-1] // encoder.patch_size
                outputs["patch_embeddings"] = tokens[:, 1:].reshape(len(tokens), 1, grid, grid, -1).numpy()
            results.append(outputs)
    return results


def export_v15(options: ExportOptions, encoder: EncoderV15, checkpoint: str, sha: str, weights: str,
               log: Callable[[str], None] = print) -> ExportReport:  # fmt: skip
    """Build, check and publish every requested format for every sensor; raises :class:`ExportError`
    (:class:`RefusedInput` for options that do not apply)."""
    problem = v15_options_problem(options)
    if problem:
        raise RefusedInput(problem)
    sensors = [sensor_spec(name) for name in (options.sensors or ("sentinel-2-l2a",))]
    chip = options.chip_size or CHIP_SIZE
    report = ExportReport()
    report.summary = [
        f"weights: {weights} (Clay v1.5 '{encoder.size.name}'" + (f", sha256 {sha[:12]}…)" if sha else ")"),
        f"chips {chip} x {chip} px, patch {encoder.patch_size}; conventions: {options.convention}; "
        f"output: embedding [B, {encoder.dim}] (CLS token)"
        + (f" and patch_embeddings [B, 1, {chip // 8}, {chip // 8}, {encoder.dim}]" if options.patch_embeddings else ""),
        *(f"{s.key}: {len(s.bands)} bands ({' '.join(s.bands)}), gsd {s.gsd:g} m" for s in sensors),
    ]  # fmt: skip
    stage = staging_dir(options.out)
    try:
        staged: list[tuple[Sensor, list[Path]]] = []
        for sensor in sensors:
            folder = stage / sensor.key
            folder.mkdir()
            part = ExportReport()
            job = BuildJob(
                encoder, options, folder,
                lambda fmt, s=sensor: make_metadata_v15(encoder, s, options, fmt.precision, checkpoint, sha, weights),
                lambda line, s=sensor: log(f"{s.key}: {line}"), report.seconds,
                module_factory=lambda s=sensor, **kw: InferenceEncoderV15(encoder, s, chip, options.convention,
                                                                          options.patch_embeddings, **kw),
            )  # fmt: skip
            built = _build(job, options.formats, part)
            if options.check:
                _check_v15(job, sensor, built, part)
            report.notes += [f"{sensor.key}: {note}" for note in part.notes]
            report.scores += part.scores
            staged.append((sensor, part.artifacts))
        for sensor, paths in staged:
            target = options.out / sensor.key
            target.mkdir(exist_ok=True)
            for path in paths:
                os.replace(path, target / path.name)
                report.artifacts.append(target / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if options.triton_repository is not None:
        from .triton import write_repository

        try:
            for sensor in sensors:
                report.artifacts += write_repository(options.out / sensor.key, options.triton_repository, options.batch,
                                                     report.notes.append)  # fmt: skip
        except OSError as exc:
            raise ExportError(f"{options.triton_repository}: cannot write the Triton repository ({exc.strerror or exc})") from None
    return report


def _check_v15(job: BuildJob, sensor: Sensor, built, report: ExportReport) -> None:
    """Every built artifact on the same chips against the eager fp32 encoder; below a bound fails all."""
    options = job.options
    feeds = check_feeds_v15(sensor, options.chip_size or CHIP_SIZE)
    expected = eager_reference_v15(job.encoder, sensor, options.convention, feeds, options.patch_embeddings)
    check_built(job, built, feeds, expected, report, label=f"{sensor.key}/")
