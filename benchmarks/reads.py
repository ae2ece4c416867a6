"""Does the reader keep up with the decoder? The runtime's chip reads against GDAL's decode of the same windows.

``python -m clay.benchmarks.reads [--size 3072] [--threads 1 --threads 2] [--rounds 3] [--out DIR]``
writes a Sentinel-2 L2A tile laid out as archives publish it (one tiled DEFLATE Cloud-Optimized
GeoTIFF per band, B02/B03/B04/B08 at 10 m and B05/B06/B07/B8A/B11/B12 at 20 m on a grid aligned
with the 10 m one, processing baseline 04.00's ``BOA_ADD_OFFSET`` −1000 declared) by repeating the
bundled real scene T48QUE's bands to ``--size`` 10 m pixels, then measures, in interleaved rounds
(each round times every row once, so a loaded machine favours none), for each thread count:

- **GDAL decode**: every band's window of every chip at its own resolution (512² at 10 m, 256² at
  20 m), ``DatasetReader.read`` into the file's uint16: the decoder's speed, the ceiling;
- **runtime, nearest**: :func:`clay.runtime.scenes.reader.read_chip` (nodata, units, checks,
  padding, float32 chip), the 20 m bands read at native resolution and repeated 2×2;
- **runtime, bilinear**: the same with ``--resampling bilinear`` (GDAL resamples the 20 m windows).

A ratio is the median over rounds of (runtime chips/s) / (GDAL chips/s) of the same round. Writes
``reads-s2-cog.json`` and ``.md`` into ``--out``. Each thread keeps its files open between chips,
as the pipeline's readers do, and chips are taken in grid order (GDAL's block cache as in clay-run).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.engines.choice import read_engine_metadata
from clay.runtime.metadata import package_versions
from clay.runtime.options import RunOptions, cpu_count
from clay.runtime.scenes.reader import gdal_env, read_chip
from clay.runtime.scenes.scene import Scene, open_scene
from rasterio.windows import Window

from .report import DEFAULT_OUT, measured_on, short_commit, write_results

TEN_M = ("B02", "B03", "B04", "B08")
#: COG tile sides measured by default: archives differ (GDAL's COG driver defaults to 512), and the
#: decode's share of a read grows with the tile (a 512² chip decodes whole tiles), so each is a row.
BLOCKS = (256, 512, 1024)
#: Processing baseline 04.00+ (from 2022-01-25) stores DN + 1000 and declares BOA_ADD_OFFSET −1000.
OFFSET = 1000


def write_tile(folder: Path, size: int, block: int = 512) -> Path:
    """The S2 tile: each band of the bundled T48QUE scene (1068² px at 10 m, real values) repeated
    by mirroring to ``size`` 10 m pixels (``size // 2`` at 20 m, same origin), DN + 1000 where valid,
    written as a DEFLATE COG with ``block``-px tiles and overviews, as archives publish it."""
    folder.mkdir(parents=True, exist_ok=True)
    for band in S2_BANDS:
        with rasterio.open(DEMO_SCENE / f"{band}.tif") as src:
            data, transform, crs = src.read(1), src.transform, src.crs
        side = size if band in TEN_M else size // 2
        reps = -(-side // data.shape[0]) + 1
        tiled = np.pad(data, ((0, reps * data.shape[0] - data.shape[0]), (0, reps * data.shape[1] - data.shape[1])),
                       mode="symmetric")[:side, :side]  # fmt: skip
        tiled = np.where(tiled > 0, tiled.astype(np.uint32) + OFFSET, 0).astype(np.uint16)
        profile = {"driver": "COG", "width": side, "height": side, "count": 1, "dtype": "uint16", "crs": crs,
                   "transform": transform, "compress": "DEFLATE", "blocksize": block, "overviews": "AUTO"}  # fmt: skip
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(tiled, 1)
            dst.update_tags(date="2023-06-01", BOA_ADD_OFFSET=str(-OFFSET))
    return folder


_local = threading.local()


def gdal_decode(scene: Scene, chip) -> None:
    """Every band's window of the chip at its own resolution, as stored (uint16): no resampling, no
    nodata, no units. The files stay open in the thread, as the runtime's do."""
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    for source in scene.sources:
        handle = handles.get(source.path)
        if handle is None:
            handle = handles[source.path] = rasterio.open(source.path)
        k = round(handle.transform.a / scene.transform.a)
        handle.read(1, window=Window(chip.col // k, chip.row // k, -(-chip.width // k), -(-chip.height // k)))


def close_handles() -> None:
    for handle in getattr(_local, "handles", {}).values():
        handle.close()
    _local.handles = {}


def timed(scene: Scene, threads: int, how: str) -> tuple[float, float]:
    """Chips/s over every chip of the scene in grid order with ``threads`` threads, each reading into
    its own reused buffer (``how``: ``gdal`` or ``runtime``), and chips per CPU second (the reading
    threads' own CPU time, ``time.thread_time``: what other processes on a shared machine take from
    the wall clock does not count there)."""
    chips = scene.chips()
    meta_bands = len(scene.sources)
    buffers = np.empty((threads, meta_bands, scene.chip_size, scene.chip_size), np.float32)
    slots = threading.local()
    counter = iter(range(threads))
    lock = threading.Lock()

    def enter() -> None:
        env = gdal_env()
        env.__enter__()
        with lock:
            slots.buffer = buffers[next(counter)]

    cpu = []

    def read(chip) -> None:
        start = time.thread_time()
        if how == "gdal":
            gdal_decode(scene, chip)
        else:
            read_chip(scene, chip, slots.buffer)
        cpu.append(time.thread_time() - start)  # list.append is atomic under the GIL

    with ThreadPoolExecutor(threads, initializer=enter) as pool:
        list(pool.map(read, chips[:threads]))  # warm: files opened, first blocks cached in every thread
        cpu.clear()
        start = time.perf_counter()
        list(pool.map(read, chips))
        seconds = time.perf_counter() - start
        list(pool.map(lambda _: close_handles(), range(threads)))
    return len(chips) / seconds, len(chips) / sum(cpu)


def markdown(report: dict) -> str:
    shared = ", shared with other work" if report["shared"] else ""
    head = (f"Chip reads on {report['cpu']} ({report['cores']} cores{shared}), GDAL {report['gdal']}, commit "
            f"{short_commit(report['commit'])}, {report['date']}. S2 L2A tile of {report['size']}² px at 10 m "
            f"({report['chips']} chips of {report['chip_size']}²), one DEFLATE COG per band; {report['rounds']} "
            "interleaved rounds per tile layout; chips/s are medians over rounds, a ratio the median of each round's "
            "ratio to GDAL's decode of the same windows at their native resolution.")  # fmt: skip
    columns = ("| COG tiles | threads | GDAL decode (chips/s) | runtime, nearest | ratio (CPU time) | runtime, bilinear | "
               "ratio (CPU time) |")  # fmt: skip
    lines = [head, "", columns, "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['block']}² | {row['threads']} | {row['gdal']:.1f} | {row['nearest']:.1f} | "
                     f"{row['nearest_ratio']:.2f}× ({row['nearest_cpu_ratio']:.2f}×) | {row['bilinear']:.1f} | "
                     f"{row['bilinear_ratio']:.2f}× ({row['bilinear_cpu_ratio']:.2f}×) |")  # fmt: skip
    lines += ["", ("Ratio: wall-clock chips/s against GDAL's; in brackets, chips per CPU second of the reading "
                   "threads against GDAL's (steadier where other processes share the cores).")]  # fmt: skip
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", type=click.IntRange(min=512), default=3072, show_default=True, help="Tile side in 10 m pixels.")
@click.option("--block", "blocks", type=click.IntRange(min=64), multiple=True,
              help=f"COG tile side in pixels (repeatable; default {' '.join(map(str, BLOCKS))}).")
@click.option("--threads", "thread_counts", type=click.IntRange(min=1), multiple=True, help="Reader threads (default 1 2).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved timed rounds.")
@click.option("--shared", is_flag=True, help="Say in the results that the machine was running other work.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size, blocks, thread_counts, rounds, shared, out) -> None:
    """The runtime's chip reads (nearest and bilinear) against GDAL's native-resolution decode of the
    same windows on an S2 tile laid out as archives publish it (see the module docstring)."""
    thread_counts = thread_counts or (1, 2)
    engine = read_engine_metadata(DEMO_ENGINE)  # the ten S2 bands; the resampling is set per row
    rows = []
    for block in blocks or BLOCKS:
        with tempfile.TemporaryDirectory(prefix="clay-reads-") as tmp:
            folder = write_tile(Path(tmp) / "S2-tile", size, block)
            scenes = {how: open_scene(folder, replace(engine, resampling=how), RunOptions(resampling=how))
                      for how in ("nearest", "bilinear")}  # fmt: skip
            assert {s.mode for s in scenes["nearest"].sources} == {"direct", "repeat"}
            assert {s.mode for s in scenes["bilinear"].sources} == {"direct", "resample"}
            rates = {t: {"gdal": [], "nearest": [], "bilinear": []} for t in thread_counts}
            cpu_rates = {t: {"gdal": [], "nearest": [], "bilinear": []} for t in thread_counts}
            for r in range(rounds):
                for t in thread_counts:
                    for how in ("gdal", "nearest", "bilinear"):
                        scene = scenes["nearest" if how == "gdal" else how]
                        wall, cpu = timed(scene, t, "gdal" if how == "gdal" else "runtime")
                        rates[t][how].append(wall)
                        cpu_rates[t][how].append(cpu)
                    click.echo(f"{block}² tiles, round {r + 1}, {t} thread(s): "
                               + ", ".join(f"{h} {v[-1]:.1f}" for h, v in rates[t].items()), err=True)  # fmt: skip
            chips, chip_size = len(scenes["nearest"].chips()), scenes["nearest"].chip_size
        for t, measured in rates.items():
            row = {"block": block, "threads": t, **{how: statistics.median(values) for how, values in measured.items()}}
            per_cpu = cpu_rates[t]
            for how in ("nearest", "bilinear"):
                row[f"{how}_ratio"] = statistics.median(a / g for a, g in zip(measured[how], measured["gdal"]))
                row[f"{how}_cpu_ratio"] = statistics.median(a / g for a, g in zip(per_cpu[how], per_cpu["gdal"]))
            rows.append(row | {"per_round": measured, "per_round_chips_per_cpu_s": per_cpu})
    report = {**measured_on(), "shared": shared, "platform": platform.platform(), "versions": package_versions(),
              "gdal": rasterio.__gdal_version__, "size": size, "blocks": list(blocks or BLOCKS), "chips": chips,
              "chip_size": chip_size, "rounds": rounds, "threads": list(thread_counts), "rows": rows}  # fmt: skip
    write_results(out, "reads-s2-cog", report, markdown(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))
    main()
