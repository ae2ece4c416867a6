"""Does the pipeline keep the engine busy? Reads, the engine alone, and clay-run end to end.

``python -m clay.benchmarks.throughput --engine DIR_OR_FILE --scene SCENE [--copies 4]`` measures,
in one run on one machine:

- **reads**: chips/s of read + prepare alone (the runtime's own reader, as clay-run runs it), for
  each ``--threads`` count, on each scene;
- **engine alone**: chips/s of ``Engine.infer`` on chips already in memory, host copies included,
  for each ``--batch`` and each artifact (``--engine`` may be given several times);
- **end to end**: clay-run's pipeline on ``--copies`` copies of each scene (several scenes in
  flight), against the engine alone on as many chips in the same batches, with the seconds of
  every stage (read, wait for reads, copy in, compute, copy out, write).

Writes ``throughput-<device>.json`` and ``.md`` into ``--out``. Generated scenes:
``--generate WIDTHxHEIGHT`` writes a 13-band float32 deflate scene like the issue's benchmark (a
generated 2048² area repeated to the size: realistic values and compression, written in seconds).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
from clay.runtime.bands import BAND_NAMES
from clay.runtime.engines.base import Engine
from clay.runtime.engines.choice import open_engine
from clay.runtime.metadata import package_versions
from clay.runtime.options import RunOptions, cpu_count
from clay.runtime.outputs.publish import ScenePaths
from clay.runtime.pipeline import ChipReaders, SceneJob, run_scenes
from clay.runtime.scenes.reader import gdal_env, read_chip
from clay.runtime.scenes.scene import open_scene
from clay.runtime.timing import StageClock
from clay.training.synthetic import make_chips

from .report import DEFAULT_OUT, measured_on, stage_line, write_results


def read_rate(scene_path: Path, engine: Engine, threads: int, limit: int | None = None) -> float:
    """Chips/s of reading and preparing a scene's chips (nodata, units, padding) with ``threads``
    threads, each into its own reused buffer, as the pipeline's readers do."""
    scene = open_scene(scene_path, engine.metadata)
    chips = scene.chips()[:limit]
    meta = engine.metadata
    buffers = np.empty((threads, len(meta.bands), meta.chip_size, meta.chip_size), np.float32)

    def read(k: int) -> None:
        with gdal_env():
            read_chip(scene, chips[k], buffers[k % threads])
            scene.chip_centre(chips[k])

    read(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, range(len(chips))))
    return len(chips) / (time.perf_counter() - start)


def engine_rate(engine: Engine, batch: int, chips: int) -> float:
    """Chips/s of the engine alone on ``chips`` chips in batches of ``batch``, host copies included."""
    pixels, lonlat, date = make_chips(min(batch, 4), seed=3)
    pixels = pixels[:, [BAND_NAMES.index(b) for b in engine.metadata.bands]]
    repeat = -(-batch // len(pixels))
    pixels, lonlat, date = (np.concatenate([a] * repeat)[:batch] for a in (pixels, lonlat, date))
    engine.infer(pixels, lonlat, date)  # warm-up: kernels chosen, memory allocated
    start = time.perf_counter()
    for first in range(0, chips, batch):
        count = min(batch, chips - first)
        engine.infer(pixels[:count], lonlat[:count], date[:count])
    return chips / (time.perf_counter() - start)


def timed_pipeline(engine: Engine, jobs: list[SceneJob], options: RunOptions, clock: StageClock) -> tuple[int, float]:
    """clay-run's pipeline on ``jobs`` with its own reader threads: chips embedded and wall seconds."""
    pool = ChipReaders(options.reader_count)
    try:
        start = time.perf_counter()
        done = sum(r.chips_done for r in run_scenes(engine, jobs, options, pool, clock=clock))
        return done, time.perf_counter() - start
    finally:
        pool.close()


def end_to_end(engine: Engine, scenes: list[Path], batch: int, readers: int | None = None, label: str = "") -> dict:
    """clay-run's pipeline on ``scenes`` (all in one run) vs the engine alone on as many chips in
    the same batches; the stage seconds say where the pipeline's time went."""
    options = RunOptions(batch_size=batch, readers=readers)
    clock = StageClock()
    with tempfile.TemporaryDirectory(prefix="clay-e2e-") as tmp:
        jobs = [SceneJob(open_scene(p, engine.metadata, options), ScenePaths(Path(tmp) / f"{k}-{p.stem}.parquet"))
                for k, p in enumerate(scenes)]  # fmt: skip
        chips = sum(len(job.scene.chips()) for job in jobs)
        alone = engine_rate(engine, batch, chips)
        done, seconds = timed_pipeline(engine, jobs, options, clock)
    rate = done / seconds
    return {"scene": label or ", ".join(p.name for p in scenes), "scenes": len(scenes), "chips": done,
            "backend": f"{engine.backend} ({engine.path.name}, {engine.metadata.model_size})", "batch": batch, "readers": options.reader_count,
            "pinned": getattr(engine, "pinned", False), "engine_chips_per_s": alone, "pipeline_chips_per_s": rate,
            "percent": 100 * rate / alone, "seconds": seconds, "stages": dict(clock.seconds)}  # fmt: skip


def device_name(engine: Engine) -> str:
    if engine.backend in ("onnx-cuda", "tensorrt"):
        try:
            import subprocess

            return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[0]  # fmt: skip
        except (OSError, subprocess.CalledProcessError, IndexError):
            return "CUDA GPU"
    return "cpu"


def markdown(report: dict) -> str:
    lines = [f"Throughput on {report['device']} + {report['cpu']} ({report['cores']} cores), commit "
             f"{report['commit'][:10]}{'+modified' if report['commit'].endswith('+modified') else ''}, {report['date']}.", ""]  # fmt: skip
    if report["reads"]:
        lines += ["**Reads** (read + prepare, chips/s):", "", "| scene | " + " | ".join(f"{t} thread{'s' * (t > 1)}"
                  for t in report["threads"]) + " |", "|---|" + "---|" * len(report["threads"])]  # fmt: skip
        for row in report["reads"]:
            lines.append(f"| {row['scene']} | " + " | ".join(f"{row['chips_per_s'][str(t)]:.1f}" for t in report["threads"]) + " |")
        lines.append("")
    if report["engines"]:
        lines += ["**Engine alone** (chips in memory, host copies included, chips/s):", "",
                  "| artifact | backend | batch | chips/s |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['artifact']} | {r['backend']} | {r['batch']} | {r['chips_per_s']:.1f} |" for r in report["engines"]]
        lines.append("")
    for row in report["end_to_end"]:
        lines.append(f"**End to end** ({row['scene']}: {row['scenes']} scenes, {row['chips']} chips, {row['backend']}, "
                     f"batch {row['batch']}, {row['readers']} readers{', pinned ring' if row['pinned'] else ''}): "
                     f"{row['pipeline_chips_per_s']:.1f} chips/s vs {row['engine_chips_per_s']:.1f} for the engine alone "
                     f"= {row['percent']:.0f} %. Time in: {stage_line(row)} ({row['seconds']:.1f} s wall).")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


@click.command()
@click.option("--engine", "engines", type=click.Path(path_type=Path, exists=True), multiple=True, required=True,
              help="An artifact or export folder (repeatable; the first one runs end to end).")
@click.option("--backend", default="auto", show_default=True)
@click.option("--scene", "scenes", type=click.Path(path_type=Path, exists=True), multiple=True)
@click.option("--generate", default=None, help="WIDTHxHEIGHT: also write a generated 13-band float32 scene.")
@click.option("--copies", type=click.IntRange(min=1), default=1, show_default=True,
              help="Scenes in the end-to-end run: copies of each scene, run together.")
@click.option("--threads", "thread_counts", type=click.IntRange(min=1), multiple=True, help="Reader threads for the read rates.")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, help="Batch sizes for the engine alone.")
@click.option("--readers", "reader_counts", type=click.IntRange(min=1), multiple=True,
              help="Reader threads end to end (repeatable; default: one per core).")
@click.option("--label", default=None, help="Device label for the output file name (default: from the engine).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(engines, backend, scenes, generate, copies, thread_counts, batches, reader_counts, label, out) -> None:
    thread_counts = thread_counts or (1, 2)
    with tempfile.TemporaryDirectory(prefix="clay-throughput-") as tmp:
        scenes = list(scenes)
        if generate:
            from clay.training.synthetic import write_scene

            width, height = (int(v) for v in generate.lower().split("x"))
            name = f"generated-{width}x{height}-13band-float32.tif"
            scenes.append(write_scene(Path(tmp) / name, width, height, seed=5, tile=2048))
        opened = [open_engine(path, backend) for path in engines]
        first = opened[0]
        batches = batches or (first.preferred_batch,)
        reads = []
        for scene in scenes:
            fitting = next((engine for engine in opened if _fits(engine, scene)), None)
            if fitting is None:
                continue
            rates = {str(t): read_rate(scene, fitting, t) for t in thread_counts}
            reads.append({"scene": scene.name, "chips_per_s": rates})
            click.echo(f"reads {scene.name}: {rates}", err=True)
        rows = []
        for engine in opened:
            for batch in batches:
                artifact = f"{engine.path.name} ({engine.metadata.model_size}, {len(engine.metadata.bands)} bands)"
                rows.append({"artifact": artifact, "backend": engine.backend, "batch": batch,
                             "chips_per_s": engine_rate(engine, batch, 8 * batch)})  # fmt: skip
                click.echo(f"engine alone {rows[-1]}", err=True)
        e2e = []
        for scene in (s for s in scenes if _fits(first, s)):
            copied = [scene]
            for k in range(1, copies):
                copied.append(Path(tmp) / f"copy{k}-{scene.name}")
                if scene.is_dir():
                    shutil.copytree(scene, copied[-1])
                else:
                    shutil.copy(scene, copied[-1])
            for readers in reader_counts or (None,):
                e2e.append(end_to_end(first, copied, max(batches), readers, label=f"{scene.name} ×{copies}"))
                click.echo(f"end to end {e2e[-1]}", err=True)
        device = label or device_name(first)
        report = {"device": device, **measured_on(), "platform": platform.platform(), "versions": package_versions(), "threads": list(thread_counts), "reads": reads, "engines": rows,
                  "end_to_end": e2e}  # fmt: skip
    stem = "throughput-" + "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    write_results(out, stem, report, markdown(report))


def _fits(engine: Engine, scene: Path) -> bool:
    """Whether the scene has the engine's bands (the demo scene has no SAR for a 13-band engine)."""
    from clay.runtime.errors import SceneError

    try:
        open_scene(scene, engine.metadata)
        return True
    except SceneError:
        return False


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))
    main()
