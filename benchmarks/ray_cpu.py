"""What Ray costs and what it moves: ``clay-run --ray`` against the single-process ``clay-run``.

``python -m clay.benchmarks.ray_cpu [--engine FILE] [--scenes 8] [--size 2048] [--rounds 2]``
measures, on one machine, on the same generated uint16 S2 scenes:

- **end to end**: both commands as a user runs them (separate processes, interleaved rounds, the
  machine may be shared): each one's own chips/s (engine load, validation and Ray's start-up
  excluded, as their summary lines report them), Ray's start-up, and each command's whole time;
- **per actor**: Ray Data runs in this process on one local Ray (started once): one engine actor
  with the reads fused into it (an actor's chips/s on one CPU), the CLI's layout (one actor per
  CPU), and the GPU-like layout (one actor, reads in separate CPU tasks);
- **load per chip**: bytes each stage hands on (Ray Data's own statistics: what goes through the
  object store), what reaches the driver, the driver's CPU time per chip and its peak RSS.

Writes ``ray-cpu-<size>-<precision>.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.options import RunOptions, cpu_count
from clay.runtime.outputs.publish import ScenePaths
from clay.runtime.ray_job import Layout, RayCluster, run_on_ray
from clay.runtime.scenes.scene import open_scene
from clay.training.synthetic import write_scene

from .bench import RssSampler
from .report import DEFAULT_OUT, git_commit, write_results

SUMMARY = re.compile(r"done: (\d+) chips, \d+ skipped, ([\d.]+) s, ([\d.]+) chips/s")
STARTUP = re.compile(r"Ray start-up ([\d.]+) s")
OPERATOR = re.compile(r"^Operator \d+ (.+?): (\d+) tasks executed", re.M)
OUTPUT_BYTES = re.compile(r"Output size bytes per block: .*?, ([\d.]+) total")
WALL = re.compile(r"Remote wall time: .*?, ([\d.]+)(us|ms|s) total")
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def make_scenes(folder: Path, count: int, size: int) -> list[Path]:
    """Generated uint16 S2 scenes (a 1024² area repeated: realistic values, written in seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_scene(folder / f"scene{k}.tif", size, size, seed=k, dtype="uint16", bands=S2_BANDS,
                        tile=min(size, 1024)) for k in range(count)]  # fmt: skip


def run_command(scenes: list[Path], engine: Path, out: Path, ray: bool) -> dict:
    """One ``clay-run`` as a user runs it: its summary figures and its whole time."""
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, scenes), "--engine", str(engine),
                             "--out", str(out), *(["--ray"] if ray else [])], capture_output=True, text=True,
                            timeout=3600, env=env)  # fmt: skip
    whole = time.perf_counter() - start
    if result.returncode:
        raise click.ClickException(f"clay-run{' --ray' if ray else ''} failed: {result.stderr.strip()[-2000:]}")
    chips, seconds, rate = SUMMARY.search(result.stdout).groups()
    startup = STARTUP.search(result.stdout)
    return {"chips": int(chips), "seconds": float(seconds), "chips_per_s": float(rate), "whole_s": round(whole, 2),
            "ray_startup_s": float(startup.group(1)) if startup else None}  # fmt: skip


def operators(stats: str, chips: int) -> list[dict]:
    """Per Ray Data operator: its name, the bytes per chip it handed on and its tasks' wall time per
    chip (Ray Data's statistics)."""
    rows = []
    parts = re.split(r"(?=^Operator \d+ )", stats, flags=re.M)
    for part in parts:
        head, size, wall = OPERATOR.search(part), OUTPUT_BYTES.search(part), WALL.search(part)
        if head and size:
            rows.append({"operator": head.group(1), "tasks": int(head.group(2)),
                         "bytes_per_chip": round(float(size.group(1)) / chips),
                         "task_ms_per_chip": round(1000 * float(wall.group(1)) * UNITS[wall.group(2)] / chips, 2) if wall else None})  # fmt: skip
    return rows


def run_in_process(cluster: RayCluster, engine_info, scenes: list[Path], out: Path, layout: Layout) -> dict:
    """One Ray Data job with a given layout, driven from this process: chips/s, what each stage
    handed on, and the driver's CPU time per chip and memory."""
    options = RunOptions(keep_going=True)
    jobs = [(open_scene(p, engine_info.metadata, options), ScenePaths(out / f"{p.stem}.parquet")) for p in scenes]
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {}
    seen: list[tuple[float, int]] = []  # (seconds, chips back) at every batch of rows the driver gets
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with RssSampler() as memory:  # the driver's memory before the job and at its peak
        results = list(run_on_ray(cluster, engine_info, jobs, options, layout=layout, stats=stats,
                                  progress=lambda counts: seen.append((counts.seconds, counts.chips_done))))  # fmt: skip
    seconds = time.perf_counter() - start
    (first_s, first_chips), (last_s, last_chips) = seen[0], seen[-1]
    used = resource.getrusage(resource.RUSAGE_SELF)
    chips = sum(r.chips_done for r in results)
    assert chips and not any(r.error for r in results), [r.error for r in results if r.error]
    driver_cpu = (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)
    steady = (last_chips - first_chips) / (last_s - first_s) if last_s > first_s else 0.0
    return {"layout": layout.describe(), "chips": chips, "seconds": round(seconds, 2), "chips_per_s": round(chips / seconds, 2),
            "first_rows_s": round(first_s, 2), "steady_chips_per_s": round(steady, 2),
            "driver_cpu_ms_per_chip": round(1000 * driver_cpu / chips, 2), "driver_rss_mb": round(memory.before),
            "driver_peak_rss_mb": round(memory.peak), "operators": operators(str(stats["dataset"]), chips)}  # fmt: skip


def best(runs: list[dict], key: str = "chips_per_s") -> dict:
    return max(runs, key=lambda r: r[key])


def report_md(record: dict) -> str:
    """The figures as the README quotes them."""
    local, ray = record["local"], record["ray"]
    one, cli, split = record["one_actor"], record["cli_layout"], record["split"]
    lines = [
        f"Command: `{record['command']}` (commit {record['commit']}, {record['date']}; {record['machine']}).",
        "",
        f"{record['scenes']} generated uint16 S2 scenes of {record['size']}² px ({local['chips']} chips), engine "
        f"`{record['engine']}` ({record['engine_description']}); best of {record['rounds']} interleaved rounds "
        "(the machine is shared).",
        "",
        "| run | chips/s | run s | Ray start-up s (not counted) | whole command s |",
        "|---|---|---|---|---|",
        f"| `clay-run` (single process) | {local['chips_per_s']:.2f} | {local['seconds']:.1f} | – | {local['whole_s']:.1f} |",
        f"| `clay-run --ray` (local Ray, {ray['layout']}) | {ray['chips_per_s']:.2f} | {ray['seconds']:.1f} | "
        f"{ray['ray_startup_s']:.1f} | {ray['whole_s']:.1f} |",
        "",
        f"`--ray` / single process: {ray['chips_per_s'] / local['chips_per_s']:.2f}× the chips/s (start-up "
        f"excluded), {local['whole_s'] / ray['whole_s']:.2f}× over the whole command.",
        "",
        "Ray Data jobs driven from one process on one local Ray (start-up excluded):",
        "",
        "| layout | chips/s | first rows back s | steady chips/s | driver CPU ms/chip (% of a core) "
        "| driver RSS MB (before → peak) | per operator: bytes per chip handed on (task ms per chip) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in (one, cli, split):
        moved = "; ".join(f"{op['operator']}: {op['bytes_per_chip']:,} ({op['task_ms_per_chip']} ms)"
                          for op in run["operators"])  # fmt: skip
        lines.append(f"| {run['layout']} | {run['chips_per_s']:.2f} | {run['first_rows_s']:.1f} | "
                     f"{run['steady_chips_per_s']:.2f} | {run['driver_cpu_ms_per_chip']:.2f} "
                     f"({run['driver_cpu_ms_per_chip'] * run['chips_per_s'] / 10:.1f} %) | "
                     f"{run['driver_rss_mb']} → {run['driver_peak_rss_mb']} | {moved} |")  # fmt: skip
    lines += [
        "",
        f"Per actor: {one['steady_chips_per_s']:.2f} chips/s on one CPU in steady state (reads fused in); "
        f"{cli['steady_chips_per_s']:.2f} with {cli['layout'].split(' (')[0]} = "
        f"{cli['steady_chips_per_s'] / max(one['steady_chips_per_s'], 1e-9):.2f}× one actor. Steady: chips/s from the "
        "first rows back to the last (actor start-up and the first batch excluded).",
    ]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", type=click.Path(path_type=Path, dir_okay=False), default=DEMO_ENGINE, show_default=True)
@click.option("--scenes", "count", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--size", type=click.IntRange(min=512), default=2048, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(engine: Path, count: int, size: int, rounds: int, out: Path) -> None:
    """Chips/s of clay-run --ray against the single process, per actor, and the bytes per chip."""
    import ray

    command = "python -m clay.benchmarks.ray_cpu " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="clay-ray-bench-") as tmp:
        tmp = Path(tmp)
        scenes = make_scenes(tmp / "scenes", count, size)
        local, remote = [], []
        for k in range(rounds):  # interleaved: a shared machine's load falls on both alike
            local.append(run_command(scenes, engine, tmp / f"local{k}", ray=False))
            remote.append(run_command(scenes, engine, tmp / f"ray{k}", ray=True))
            click.echo(f"round {k + 1}: single process {local[-1]}, --ray {remote[-1]}", err=True)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        cluster = RayCluster()
        try:
            info = cluster.engine(str(engine), "auto", None)
            cpus = int(cluster.resources()[0].get("CPU", 1))
            layouts = {"one_actor": Layout(1, 1.0, 0, True), "cli_layout": Layout(cpus, 1.0, 0, True),
                       "split": Layout(1, 1.0, 0, False)}  # fmt: skip
            runs: dict[str, list] = {name: [] for name in layouts}
            for k in range(rounds):
                for name, layout in layouts.items():
                    runs[name].append(run_in_process(cluster, info, scenes, tmp / f"{name}{k}", layout))
                    click.echo(f"round {k + 1}: {name} {runs[name][-1]}", err=True)
        finally:
            ray.shutdown()
    ray_best = best(remote)
    ray_best["layout"] = runs["cli_layout"][0]["layout"]
    record = {
        "command": command, "commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_count()} CPUs, {os.uname().machine}", "engine": engine.name, "engine_description": info.description,
        "scenes": count, "size": size, "rounds": rounds, "local": best(local), "ray": ray_best,
        **{name: best(values) for name, values in runs.items()},
        "all_rounds": {"local": local, "ray": remote, **runs},
    }  # fmt: skip
    write_results(out, f"ray-cpu-{info.metadata.model_size}-{info.metadata.precision}", record, report_md(record))


if __name__ == "__main__":
    main()
