"""``clay-bench --model clay-v1.5``: the Clay v1.5 encoder for one sensor, eager PyTorch against every
artifact, on the same chips, with the same interleaved rounds as v0 (:func:`.bench.measure`).

The baseline ``eager-fp32-clay`` is the official code path as Clay's users run it: fp32, PyTorch's
SDPA attention (``claymodel/backbone.py`` builds its transformer with ``fused_attn=True``). It runs
our encoder (``training/model_v15.py``), which ``tests/test_model_v15.py`` holds equal to the
official ``Encoder`` (cosine ≥ 0.99999, max abs ≤ 1e-5): the official package itself is not a
dependency of this project (its modules import torchvision and timm). The other PyTorch rows are the
best accurate variants (bf16 autocast, eager and compiled); the artifact rows are the format table's.

Besides chips/s, each row gives km²/s: a v1.5 chip of 256 px at 10 m covers 2.56 × 2.56 km, a v0 chip
(512 px) 5.12 × 5.12 km, so work per area, not per chip, compares the two models.
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from clay.runtime.metadata import package_versions
from clay.runtime.sensors import Sensor, sensor_named
from clay.training.model_v15 import CHIP_SIZE, EncoderV15, random_encoder_v15, set_attention
from clay.training.precision import cpu_has_bf16
from clay.training.synthetic import make_chips

from .backends import ARTIFACT_CONTENDERS, Backend, artifact_backends
from .bench import measure
from .flops import cpu_peak
from .report import bar_chart, git_commit, markdown

SENSOR = "sentinel-2-l2a"  # the sensor clay-run reads today; its chips come from make_chips' S2 bands


def encoder_flops_v15(encoder: EncoderV15, channels: int, chip: int = CHIP_SIZE) -> int:
    """FLOPs (2 × multiply-adds) of one chip through the v1.5 encoder: the folded patch-embedding
    convolution and the transformer over 1 + (chip/8)² tokens (the wavelength transformer is folded
    at export: not per chip)."""
    s = encoder.size
    tokens = (chip // encoder.patch_size) ** 2
    n, d, inner, hidden = tokens + 1, s.dim, s.heads * s.dim_head, int(s.dim * s.mlp_ratio)
    embed = tokens * channels * encoder.patch_size**2 * d
    per_layer = n * d * 3 * inner + 2 * n * n * inner + n * inner * d + 2 * n * d * hidden
    return 2 * (embed + s.depth * per_layer)


def eager_runner(encoder: EncoderV15, sensor: Sensor, autocast: torch.dtype | None, compiled: bool = False, fold: bool = False):
    """``run(pixels, lonlat, date) -> [B, dim]``: normalise, the 8 metadata values (the exported
    graph's own function), the encoder. Without ``fold``, what the official code does per batch
    (the wavelength transformer makes the patch-embedding kernel on every call); with it, the kernel
    and position table are made once, as a user tuning PyTorch for one sensor would (and what
    ``torch.compile`` needs: Inductor's freezing fails on the unbatched wavelength transformer)."""
    from clay.export.graph_v15 import metadata_features

    model = EncoderV15(encoder.size)
    model.load_state_dict(encoder.state_dict())
    set_attention(model.eval(), "sdpa")
    mean = torch.tensor(sensor.means)[None, :, None, None]
    std = torch.tensor(sensor.stds)[None, :, None, None]
    if fold:
        with torch.inference_mode():
            weight, bias = model.patch_embedding.kernel(sensor.wavelengths)
            position = model.position_encoding(CHIP_SIZE // model.patch_size, sensor.gsd)

        def forward(cube, time, latlon):
            patches = F.conv2d(cube, weight, bias, stride=model.patch_size).flatten(2).transpose(1, 2)
            return model.encode_tokens(patches, torch.cat((time, latlon), dim=1), position)
    else:

        def forward(cube, time, latlon):
            return model(cube, time, latlon, sensor.wavelengths, sensor.gsd)

    forward = torch.compile(forward, dynamic=False) if compiled else forward

    def run(pixels, lonlat, date):
        cube = (torch.from_numpy(pixels) - mean) / std
        values = metadata_features(torch.from_numpy(lonlat), torch.from_numpy(date), "training")
        context = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
        frozen = torch._inductor.config.patch(freezing=True) if compiled else contextlib.nullcontext()
        with torch.inference_mode(), context, frozen:
            tokens = forward(cube, values[:, :4], values[:, 4:])
        return tokens[:, 0].float().numpy()

    return run


def eager_backends_v15(encoder: EncoderV15, sensor: Sensor) -> list[Backend]:
    backends = [
        Backend("eager-fp32-clay", "PyTorch eager fp32, SDPA, kernel made per call: the official code path", "fp32",
                eager_runner(encoder, sensor, None)),
        Backend("eager-fp32-sdpa", "PyTorch eager fp32, SDPA, the sensor's kernel made once", "fp32",
                eager_runner(encoder, sensor, None, fold=True)),
    ]  # fmt: skip
    for compiled in (False, True):
        name = f"{'compiled' if compiled else 'eager'}-bf16-sdpa"
        how = "torch.compile (Inductor, freezing)" if compiled else "PyTorch eager"
        backend = Backend(name, f"{how}, SDPA + bf16 autocast, the sensor's kernel made once", "bf16")
        if not cpu_has_bf16():
            backend.absent = "this CPU has no avx512_bf16/AMX: bf16 autocast would be emulated"
        else:
            backend.run = eager_runner(encoder, sensor, torch.bfloat16, compiled, fold=True)
        backends.append(backend)
    return backends


def km2_per_chip(sensor: Sensor, chip: int = CHIP_SIZE) -> float:
    return (chip * sensor.gsd / 1000) ** 2


def run_bench(size: str, batches: tuple[int, ...], wanted: set[str], repeats: int, threads: int, out: Path) -> dict[str, Path]:
    """Export ``size`` (random weights, seed 0) for :data:`SENSOR`, measure, write bench-v1.5-SIZE.{json,md,png}."""
    from clay.export.artifacts import ExportOptions, export_artifacts

    sensor = sensor_named(SENSOR)
    encoder = random_encoder_v15(size, seed=0)
    with tempfile.TemporaryDirectory(prefix="clay-bench-v15-") as tmp:
        folder = Path(tmp)
        if any(name in ARTIFACT_CONTENDERS for name in wanted):
            click.echo(f"clay-bench: exporting Clay v1.5 {size} artifacts for {SENSOR}…", err=True)
            export_artifacts(ExportOptions(out=folder, random_weights=True, size=size, sensors=(SENSOR,), int8_cpu=True,
                                           bf16_cpu=True, int8_openvino=True, check=False), log=lambda line: None)  # fmt: skip
        candidates = eager_backends_v15(encoder, sensor) + artifact_backends(folder / SENSOR, threads, wanted)
        candidates = [b for b in candidates if b.name in wanted]
        peak = cpu_peak()
        peaks = {"fp32": peak.fp32_gflops, "bf16": peak.bf16_gflops, "int8": peak.int8_gops}
        flops = encoder_flops_v15(encoder, len(sensor.bands))
        pixels, lonlat, date = make_chips(max(batches), seed=42, size=CHIP_SIZE)
        chips = (np.ascontiguousarray(pixels[:, :10]), lonlat, date)  # S2's ten bands, the sensor's order
        results = []
        for batch in batches:
            click.echo(f"clay-bench: batch {batch}, {repeats} rounds…", err=True)
            results += measure(candidates, chips, batch, repeats, flops, peaks)
    precision = {b.name: b.precision for b in candidates}
    area = km2_per_chip(sensor)
    rows = [r.summary() | {"precision": precision[r.backend], "km2_per_s_median": r.summary()["chips_per_s_median"] * area}
            for r in results]  # fmt: skip
    report = {
        "model": "clay-v1.5", "size": size, "sensor": SENSOR, "chip_size": CHIP_SIZE, "km2_per_chip": area,
        "flops_per_chip": flops, "batches": list(batches), "repeats": repeats, "threads": threads,
        "weights": "random initialisation (seed 0)", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {"cpu": asdict(peak), "gpu": None, "platform": platform.platform(), "python": platform.python_version(),
                    "device": "cpu"},
        "versions": package_versions(),
        "backends": [{"name": b.name, "description": b.description, "precision": b.precision, "absent": b.absent}
                     for b in candidates],
        "results": rows, "end_to_end": [],
    }  # fmt: skip
    text = markdown(report).replace(f"Clay `{size}` encoder", f"Clay v1.5 `{size}` encoder ({SENSOR}, {CHIP_SIZE} px chips)", 1)
    text += "\n| backend | batch | km²/s (median) |\n|---|---|---|\n" + "".join(
        f"| {r['backend']} | {r['batch']} | {r['km2_per_s_median']:.2f} |\n" for r in rows
    )
    text += f"\nA chip here covers {area:.4g} km² ({CHIP_SIZE} px at {sensor.gsd:g} m).\n"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-v1.5-{size}"
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(text)
    bar_chart(report | {"size": f"v1.5 {size}"}, paths["png"])
    return paths
