"""The fastest CPU artifact on real data: per-chip and per-patch fidelity, and clay-run's speed.

``python -m clay.benchmarks.real_scenes --size small --data ../shared/data`` exports an int8 CPU
artifact (``--artifact``: ONNX Runtime's, default, or OpenVINO's) once per set of band groups a real scene has (the same weights each time), cuts chips with
the runtime's own reader (exactly what ``clay-run`` feeds the engine), and compares the artifact's
chip and per-patch embeddings with eager fp32 PyTorch (Clay's explicit-softmax path) on those
chips. Then ``clay-run``'s pipeline on the bundled demo scene against the engine alone, same chips,
same batches. Generated chips (clay-bench) can flatter a quantised model; real chips cannot.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from datetime import date as Date
from pathlib import Path

import click
import numpy as np
from clay.export.artifacts import ExportOptions, export_artifacts
from clay.runtime.bands import BAND_NAMES, bands_of_groups, complete_groups
from clay.runtime.console import setup_logging
from clay.runtime.demo import DEMO_SCENE
from clay.runtime.engines.choice import open_engine
from clay.runtime.scenes.discovery import discover_scenes
from clay.runtime.scenes.headers import read_header
from clay.runtime.scenes.inputs import SceneFiles
from clay.runtime.formats import format_named
from clay.runtime.options import RunOptions
from clay.runtime.scenes.reader import read_chip
from clay.runtime.scenes.scene import open_scene

from .backends import eager_backend
from .bench import cosine_rows
from .report import DEFAULT_OUT, git_commit, short_commit, write_results
from .throughput import end_to_end

# What ../shared/data/README.md says about samples whose files do not: the SSL4EO pair carries no
# date tag (S2 sensed 2020-06-04) and its S1 is in dB; a DEM has no acquisition date at all, and the
# metadata tokens need one, so it gets a fixed one.
KNOWN_SETTINGS = {
    "ssl4eo-s12-0000200": {"date": Date(2020, 6, 4), "sar_units": "db"},
    "dem-rome": {"date": Date(2020, 6, 1)},
}
#: The int8 CPU artifacts this benchmark can check: contender name → (format, backend, export option).
ARTIFACTS = {"onnx-cpu-int8": (format_named("int8"), "onnx-cpu", "int8_cpu"),
             "openvino-cpu-int8": (format_named("openvino-int8"), "openvino-cpu", "int8_openvino")}  # fmt: skip
UNNAMED_BANDS = {"dem-rome": {"Rome-30m-DEM.tif": "DEM.tif"}}  # files not named as their band


def scenes_under(data: Path, scratch: Path) -> list[SceneFiles]:
    """One scene per sample folder; files not named as their band are linked under their band name."""
    scenes = []
    # the demo scene's source is already in, as the bundled copy
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and p.name != "s2l2a-T48QUE-20200223"):
        if folder.name in UNNAMED_BANDS:
            linked = scratch / folder.name
            linked.mkdir(parents=True)
            for name, band_name in UNNAMED_BANDS[folder.name].items():
                (linked / band_name).symlink_to((folder / name).resolve())
            folder = linked
        scenes += discover_scenes([folder])
    return scenes


def groups_of(scene: SceneFiles) -> tuple[str, ...]:
    """The band groups whose every band the scene holds."""
    return complete_groups(n for p in scene.files for n in read_header(p).names if n)


def real_chips(scene: SceneFiles, metadata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every chip of the scene (shifted edge chips, padded when the scene is smaller than a chip)."""
    opened = open_scene(scene, metadata, RunOptions(**KNOWN_SETTINGS.get(scene.name, {})))
    chips = opened.chips()
    pixels = np.stack([read_chip(opened, chip)[0] for chip in chips])
    lonlat = np.array([opened.chip_centre(chip) for chip in chips], np.float32)
    day = opened.date
    return pixels, lonlat, np.tile(np.array([day.year, day.month, day.day], np.float32), (len(chips), 1))


def assembled_chips(metadata, data: Path, scratch: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """13-band chips for an all-groups artifact, each band group read from a real sample that has it:
    no real 13-band stack exists (see ../shared/data/README.md), so the demo scene's chips get SAR
    from the SSL4EO pair and elevation from the Rome DEM (one chip each, the same for every chip).
    For calibration, where each band's value range matters, not the co-location."""
    sources = discover_scenes([DEMO_SCENE]) + scenes_under(data, scratch)
    pixels = lonlat = date = None
    filled: set[int] = set()
    for scene in sources:
        groups = complete_groups(metadata.bands, groups_of(scene))
        bands = tuple(BAND_NAMES[i] for i in bands_of_groups(groups))
        if not bands or all(metadata.bands.index(b) in filled for b in bands):
            continue
        index = [metadata.bands.index(b) for b in bands]
        sub = replace(metadata, bands=bands, groups=groups, band_means=tuple(metadata.band_means[i] for i in index),
                      band_stds=tuple(metadata.band_stds[i] for i in index))  # fmt: skip
        chip_pixels, chip_lonlat, chip_date = real_chips(scene, sub)
        if pixels is None:
            pixels = np.zeros((len(chip_pixels), len(metadata.bands), *chip_pixels.shape[2:]), np.float32)
            lonlat, date = chip_lonlat, chip_date
        pixels[:, index] = chip_pixels[np.arange(len(pixels)) % len(chip_pixels)]
        filled |= set(index)
    missing = [b for i, b in enumerate(metadata.bands) if pixels is None or i not in filled]
    if missing:
        raise ValueError(f"no real sample under {data} has {', '.join(missing)}")
    return pixels, lonlat, date


def fidelity(chips, reference, artifact: Path, threads: int, backend: str = "onnx-cpu") -> dict:
    engine = open_engine(artifact, backend, threads)
    chip_ref, grid_ref = reference
    outputs = [engine.infer(*(a[i : i + 1] for a in chips)) for i in range(len(chips[0]))]
    chip_out = np.concatenate([o["embedding"] for o in outputs])
    grid_out = np.concatenate([o["patch_embeddings"] for o in outputs])
    dim = grid_ref.shape[-1]
    patch_cos = cosine_rows(grid_out.reshape(-1, dim), grid_ref.reshape(-1, dim))
    chip_cos = cosine_rows(chip_out, chip_ref)
    return {"chips": len(chip_cos), "patches": len(patch_cos),
            "chip_cosine_min": float(chip_cos.min()), "chip_cosine_median": float(np.median(chip_cos)),
            "chip_max_abs_error": float(np.abs(chip_out - chip_ref).max()),
            "patch_cosine_min": float(patch_cos.min()), "patch_cosine_p01": float(np.percentile(patch_cos, 1)),
            "patch_cosine_median": float(np.median(patch_cos))}  # fmt: skip


@click.command()
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True)
@click.option("--data", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="A folder of real scene folders (e.g. ../shared/data); the bundled demo scene is always used.")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, help="End-to-end batch sizes (default 2 8).")
@click.option("--artifact", type=click.Choice(list(ARTIFACTS)), default="onnx-cpu-int8", show_default=True,
              help="Which int8 CPU artifact to check; openvino-cpu-int8 writes real-scenes-SIZE-openvino-cpu-int8.*")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size: str, data: Path | None, batches: tuple[int, ...], artifact: str, out: Path) -> None:
    import torch
    from clay.training.model import random_clay_mae

    setup_logging("clay-bench")
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = random_clay_mae(size, seed=0)
    fmt, backend, option = ARTIFACTS[artifact]
    rows, e2e = [], []
    with tempfile.TemporaryDirectory(prefix="clay-real-") as tmp:
        scenes = discover_scenes([DEMO_SCENE]) + (scenes_under(data, Path(tmp) / "linked") if data else [])
        ckpt = Path(tmp) / "weights.pt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
        exported: dict[tuple[str, ...], Path] = {}
        for scene in scenes:
            groups = groups_of(scene)
            if not groups:
                click.echo(f"real-scenes: {scene.path}: no complete band group, skipped", err=True)
                continue
            if groups not in exported:
                folder = Path(tmp) / "-".join(groups)
                click.echo(f"real-scenes: exporting {size} for {', '.join(groups)}…", err=True)
                report = export_artifacts(ExportOptions(out=folder, checkpoint=ckpt, groups=groups, patch_embeddings=True,
                                                        check=False, **{option: True}), log=lambda _: None)  # fmt: skip
                exported[groups] = folder / fmt.file_name
                for note in report.notes:  # e.g. no OpenVINO int8 IR for a DEM-only engine: nothing to calibrate on
                    click.echo(f"real-scenes: {note}", err=True)
            path = exported[groups]
            if not path.is_file():
                click.echo(f"real-scenes: {scene.name}: no {fmt.file_name} for {', '.join(groups)}, skipped", err=True)
                continue
            chips = real_chips(scene, open_engine(path, backend, threads).metadata)
            click.echo(f"real-scenes: {scene.name}: {len(chips[0])} chips, eager fp32…", err=True)
            reference = eager_backend(model, groups, "explicit", None, "cpu", patch_embeddings=True)(*chips)
            rows.append({"scene": scene.name, "groups": list(groups), "artifact": fmt.file_name}
                        | fidelity(chips, reference, path, threads, backend))  # fmt: skip
            if scene.path == DEMO_SCENE:
                for batch in batches or (2, 8):
                    engine = open_engine(path, backend, threads)
                    e2e.append(end_to_end(engine, [DEMO_SCENE], batch, label="bundled demo scene T48QUE"))
    report = {"size": size, "threads": threads, "commit": git_commit(), "weights": "random initialisation (seed 0)",
              "reference": "eager fp32 PyTorch, explicit softmax attention", "fidelity": rows, "end_to_end": e2e}  # fmt: skip
    lines = [f"Clay `{size}`, {fmt.file_name} on {backend} vs eager fp32 PyTorch on chips cut by the runtime from real scenes "
             f"(random weights, seed 0; commit {short_commit(report['commit'])}).", "",
             "| scene | groups | chips | chip cosine min / median | chip max abs err | patches | patch cosine min / 1st pct / median |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['scene']} | {', '.join(r['groups'])} | {r['chips']} | {r['chip_cosine_min']:.6f} / "
                     f"{r['chip_cosine_median']:.6f} | {r['chip_max_abs_error']:.2g} | {r['patches']} | "
                     f"{r['patch_cosine_min']:.6f} / {r['patch_cosine_p01']:.6f} / {r['patch_cosine_median']:.6f} |")  # fmt: skip
    for row in e2e:
        lines.append(f"\nEnd to end ({row['scene']}, {row['chips']} chips, {row['backend']}, batch {row['batch']}): "
                     f"{row['pipeline_chips_per_s']:.3f} chips/s through clay-run's pipeline vs "
                     f"{row['engine_chips_per_s']:.3f} for the engine alone = {row['percent']:.0f} %.")  # fmt: skip
    stem = f"real-scenes-{size}" + ("" if artifact == "onnx-cpu-int8" else f"-{artifact}")
    write_results(out, stem, report, "\n".join(lines))


if __name__ == "__main__":
    main()
