"""What a scene costs before its first chip: many chip-sized scenes against one long scene.

``python -m clay.benchmarks.scene_opening --engine E [--scenes 8] [--rounds 3]`` writes, for the
engine's bands, ``--scenes`` generated 1024² scenes (4 chips each) and one 1024 × (1024·N) scene
of the same chips, then in interleaved rounds measures:

- **opening**: ``open_scene`` per scene (headers, band matching, grid, units, date, footprint), ms;
- **end to end**: clay-run's pipeline on the N small scenes and on the long one (same chips, same
  batch, one run each per round), chips/s, and their ratio: what each scene's fixed cost takes from
  an archive of small scenes, with scenes opened ahead of the chip stream as clay-run does.

Writes ``scene-opening-<engine>.json`` and ``.md`` into ``--out``. An engine with SAR bands gets
13-band float32 scenes (the issue's case), an S2 engine uint16 scenes (the usual L2A case).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
from clay.runtime.bands import SAR_BANDS
from clay.runtime.engines.base import Engine
from clay.runtime.engines.choice import open_engine
from clay.runtime.options import RunOptions
from clay.runtime.outputs.publish import ScenePaths
from clay.runtime.pipeline import SceneJob
from clay.runtime.scenes.scene import as_scene_files, open_scene
from clay.runtime.timing import StageClock
from clay.training.synthetic import write_scene

from .report import DEFAULT_OUT, measured_on, write_results
from .throughput import timed_pipeline

SIDE = 1024  # a small scene: 2 × 2 chips


def write_scenes(folder: Path, engine: Engine, count: int) -> tuple[list[Path], Path]:
    bands = engine.metadata.bands
    dtype = "float32" if any(b in SAR_BANDS for b in bands) else "uint16"
    small = [write_scene(folder / f"small-{k}.tif", SIDE, SIDE, seed=k, dtype=dtype, bands=bands) for k in range(count)]
    long = write_scene(folder / "long.tif", SIDE * count, SIDE, seed=0, dtype=dtype, bands=bands, tile=SIDE)
    return small, long


def run(engine: Engine, scenes: list[Path], out: Path, readers: int | None) -> tuple[float, int, dict]:
    """clay-run's pipeline on unopened scenes (opened ahead of the chip stream): chips/s."""
    options = RunOptions(readers=readers)
    clock = StageClock()
    jobs = [SceneJob(as_scene_files(p), ScenePaths(out / f"{p.stem}-{time.monotonic_ns()}.parquet")) for p in scenes]
    done, seconds = timed_pipeline(engine, jobs, options, clock)
    for job in jobs:
        job.paths.chips.unlink(missing_ok=True)
    return done / seconds, done, dict(clock.seconds)


def markdown(report: dict) -> str:
    r = report
    return "\n".join([
        f"Scene opening on {r['cpu']} ({r['cores']} cores), engine {r['engine']}, {r['scene_kind']}, commit "
        f"{r['commit'][:10]}, {r['date']}; medians of {r['rounds']} interleaved rounds.", "",
        "| what | value |", "|---|---|",
        f"| open_scene per scene | {r['open_ms']:.1f} ms (min {r['open_ms_min']:.1f}) |",
        f"| {r['scenes']} scenes of 4 chips, end to end | {r['many_chips_per_s']:.2f} chips/s |",
        f"| 1 scene of the same {r['chips']} chips, end to end | {r['one_chips_per_s']:.2f} chips/s |",
        f"| many / one | {r['ratio']:.3f} |", "",
        "Where the small scenes' time went (last round, seconds summed over threads): "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_many"].items()) + ".", "",
    ])  # fmt: skip


@click.command()
@click.option("--engine", "engine_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--scenes", "count", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--readers", type=click.IntRange(min=1), default=None)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(engine_path: Path, count: int, rounds: int, readers: int | None, out: Path) -> None:
    engine = open_engine(engine_path)
    with tempfile.TemporaryDirectory(prefix="clay-opening-") as tmp:
        folder = Path(tmp)
        small, long = write_scenes(folder, engine, count)
        opens, many, one = [], [], []
        for _ in range(rounds):
            for path in small:
                start = time.perf_counter()
                open_scene(path, engine.metadata)
                opens.append(1000 * (time.perf_counter() - start))
            rate, chips, stages = run(engine, small, folder, readers)
            many.append(rate)
            one.append(run(engine, [long], folder, readers)[0])
            click.echo(f"round: open {statistics.median(opens):.1f} ms, many {many[-1]:.2f}, one {one[-1]:.2f} chips/s", err=True)
    kind = "13-band float32" if any(b in SAR_BANDS for b in engine.metadata.bands) else "S2 uint16"
    report = {**measured_on(), "engine": f"{engine.path.name} "
              f"({engine.metadata.model_size}, {engine.metadata.precision})", "scene_kind": kind, "rounds": rounds,
              "scenes": count, "chips": chips, "open_ms": statistics.median(opens), "open_ms_min": min(opens),
              "many_chips_per_s": statistics.median(many), "one_chips_per_s": statistics.median(one),
              "ratio": statistics.median(many) / statistics.median(one), "stages_many": stages}  # fmt: skip
    stem = f"scene-opening-{engine.metadata.model_size}-{engine.metadata.precision}-{len(engine.metadata.bands)}band"
    write_results(out, stem, report, markdown(report))


if __name__ == "__main__":
    main()
