"""Does the reader keep up with the decoder? The runtime's chip reads against GDAL's decode of the same windows.

``python -m clay.benchmarks.reads [--size 3072] [--layout cog --layout folder --layout stack]
[--threads 1 --threads 2] [--rounds 3] [--out DIR]`` writes, from the bundled real scene T48QUE's
bands repeated by mirroring to ``--size`` 10 m pixels, each input layout in turn:

- **cog** (one row per ``--block``): a Sentinel-2 L2A tile laid out as archives publish it (one
  tiled DEFLATE Cloud-Optimized GeoTIFF per band, B02/B03/B04/B08 at 10 m and B05/B06/B07/B8A/B11/B12
  at 20 m on a grid aligned with the 10 m one, processing baseline 04.00's ``BOA_ADD_OFFSET`` −1000
  declared);
- **folder**: an S2 L2A folder of per-band files at their native resolutions (``B02.tif``...; plain
  tiled DEFLATE GeoTIFFs without overviews), the 60 m bands B01 and B09 beside the ten others: not bands of Clay v0, so the scene lists them as ignored
  files and nothing reads them (the GDAL side decodes what the runtime reads);
- **stack**: one 13-band float32 GeoTIFF of Clay v0's bands on the 10 m grid (the S2 bands in
  harmonised DNs, the 20 m ones repeated as a nearest-resampled stack holds them; VH/VV linear power
  and a DEM in metres derived from them), band descriptions set, nothing to resample;

then measures, in interleaved rounds (each round times every row of the layout once, so a loaded
machine favours none), for each thread count:

- **GDAL decode**: every file's window of every chip at its own resolution (512² at 10 m, 256² at
  20 m), one ``DatasetReader.read`` per file (all its bands the scene reads) into the file's own
  type: the decoder's speed, the ceiling;
- **runtime, nearest**: :func:`clay.runtime.scenes.reader.read_chip` (nodata, units, checks,
  padding, float32 chip), the 20 m bands read at native resolution and repeated 2×2;
- **runtime, bilinear**: the same with ``--resampling bilinear`` (GDAL resamples the 20 m windows;
  not measured on the stack, which has nothing to resample).

A ratio is the median over rounds of (runtime chips/s) / (GDAL chips/s) of the same round. Writes
``reads-s2-cog.json`` and ``.md`` into ``--out``. Each thread keeps its files open between chips,
as the pipeline's readers do, and chips are taken in grid order (GDAL's block cache as in clay-run).
"""

from __future__ import annotations

import os
import platform
import shutil
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
from clay.runtime.bands import BAND_MEANS, BAND_NAMES, BAND_STDS, S2_BANDS
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


#: The folder's file names: the band alone, as the runtime finds per-band files in a folder (an L2A
#: product's own IMG_DATA names, ``T48QUE_20230601T033541_B02_10m.jp2``, name no band it matches).
FOLDER_NAME = "{band}.tif"
#: The folder's 60 m bands (not bands of Clay v0), each made from a real band of the demo scene.
SIXTY_M = {"B01": "B02", "B09": "B8A"}


def mirrored(band: str, side: int) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    """A band of the bundled T48QUE scene (1068² px at 10 m, real values) repeated by mirroring to
    ``side`` pixels of its own resolution (same origin): stored values, 0 where it has no data."""
    with rasterio.open(DEMO_SCENE / f"{band}.tif") as src:
        data, transform, crs = src.read(1), src.transform, src.crs
    reps = -(-side // data.shape[0]) + 1
    pad = ((0, reps * data.shape[0] - data.shape[0]), (0, reps * data.shape[1] - data.shape[1]))
    return np.pad(data, pad, mode="symmetric")[:side, :side], transform, crs


def with_offset(data: np.ndarray) -> np.ndarray:
    """DN + 1000 where valid, as processing baseline 04.00+ stores them."""
    return np.where(data > 0, data.astype(np.uint32) + OFFSET, 0).astype(np.uint16)


def write_tile(folder: Path, size: int, block: int = 512) -> Path:
    """The S2 tile: each band of the bundled T48QUE scene repeated by mirroring to ``size`` 10 m
    pixels (``size // 2`` at 20 m, same origin), DN + 1000 where valid, written as a DEFLATE COG with
    ``block``-px tiles and overviews, as archives publish it."""
    folder.mkdir(parents=True, exist_ok=True)
    for band in S2_BANDS:
        data, transform, crs = mirrored(band, size if band in TEN_M else size // 2)
        profile = {"driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": "uint16",
                   "crs": crs, "transform": transform, "compress": "DEFLATE", "blocksize": block, "overviews": "AUTO"}  # fmt: skip
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(with_offset(data), 1)
            dst.update_tags(date="2023-06-01", BOA_ADD_OFFSET=str(-OFFSET))
    return folder


def write_s2_folder(folder: Path, size: int) -> Path:
    """The S2 folder: per-band GeoTIFFs (:data:`FOLDER_NAME`), tiled (512²) DEFLATE, no overviews, the
    ten bands at 10/20 m as :func:`write_tile` makes them and B01/B09 at 60 m (``size // 6`` px: every sixth pixel of B02, every third of B8A, see :data:`SIXTY_M`)."""
    folder.mkdir(parents=True, exist_ok=True)
    bands = {b: ("10" if b in TEN_M else "20", b) for b in S2_BANDS} | {
        b: ("60", s) for b, s in SIXTY_M.items()
    }
    for band, (res, source) in bands.items():
        data, transform, crs = mirrored(source, size if source in TEN_M else size // 2)
        if res == "60":
            step = 6 if source in TEN_M else 3
            data, transform = data[::step, ::step], transform * rasterio.Affine.scale(step)
        profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": "uint16",
                   "crs": crs, "transform": transform, "compress": "DEFLATE", "tiled": True, "blockxsize": 512,
                   "blockysize": 512}  # fmt: skip
        with rasterio.open(folder / FOLDER_NAME.format(band=band, res=res), "w", **profile) as dst:
            dst.write(with_offset(data), 1)
            dst.update_tags(date="2023-06-01", BOA_ADD_OFFSET=str(-OFFSET))
    return folder


def write_stack(path: Path, size: int) -> Path:
    """The 13-band stack: one float32 GeoTIFF of Clay v0's bands (:data:`BAND_NAMES`, described) on
    the 10 m grid, tiled (512²) DEFLATE, pixel-interleaved (GDAL's default): the S2 bands in harmonised
    DNs (the 20 m ones repeated 2 × 2, as a nearest-resampled datacube holds them), VH = B11 / 40000
    and VV = B08 / 20000 (linear power, ~0.05 and ~0.15), DEM = B04 / 10 (metres); 0 where the scene
    has no data (the S2 nodata)."""
    cube = np.empty((len(BAND_NAMES), size, size), np.float32)
    for k, band in enumerate(S2_BANDS):
        data, _, _ = mirrored(band, size if band in TEN_M else size // 2)
        cube[k] = data if band in TEN_M else np.repeat(np.repeat(data, 2, axis=0), 2, axis=1)
    _, transform, crs = mirrored("B02", 1)
    sar_dem = {"VH": ("B11", 40000.0), "VV": ("B08", 20000.0), "DEM": ("B04", 10.0)}
    for band, (source, divisor) in sar_dem.items():
        cube[BAND_NAMES.index(band)] = cube[BAND_NAMES.index(source)] / np.float32(divisor)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": len(BAND_NAMES), "dtype": "float32",
               "crs": crs, "transform": transform, "compress": "DEFLATE", "tiled": True, "blockxsize": 512,
               "blockysize": 512, "num_threads": "all_cpus"}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cube)
        dst.descriptions = BAND_NAMES
        dst.update_tags(date="2023-06-01")
    return path


_local = threading.local()


def gdal_decode(scene: Scene, chip) -> None:
    """Every file's window of the chip at its own resolution, as stored: one read per file of the
    bands the scene takes from it, no resampling, no nodata, no units. The files stay open in the
    thread, as the runtime's do."""
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    for group in scene.read_groups:
        handle = handles.get(group.path)
        if handle is None:
            handle = handles[group.path] = rasterio.open(group.path)
        k = round(handle.transform.a / scene.transform.a)
        window = Window(chip.col // k, chip.row // k, -(-chip.width // k), -(-chip.height // k))
        handle.read(list(group.indexes), window=window)


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
    shared = f", shared with other work: {report['load']}" if report["shared"] else f", {report['load']}"
    head = (f"Chip reads on {report['cpu']} ({report['cores']} cores{shared}), GDAL {report['gdal']}, commit "
            f"{short_commit(report['commit'])}, {report['date']}. Inputs of {report['size']}² px at 10 m "
            f"({report['chips']} chips of {report['chip_size']}²) made from the demo scene's real bands (see "
            f"`benchmarks/reads.py`); {report['rounds']} interleaved rounds per layout; chips/s are medians over "
            "rounds, a ratio the median of each round's ratio to GDAL's decode of the same windows at their native "
            "resolution.")  # fmt: skip
    columns = ("| layout | threads | GDAL decode (chips/s) | runtime, nearest | ratio (CPU time) | runtime, bilinear | "
               "ratio (CPU time) |")  # fmt: skip
    lines = [head, "", columns, "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        bilinear = (f"{row['bilinear']:.1f} | {row['bilinear_ratio']:.2f}× ({row['bilinear_cpu_ratio']:.2f}×)"
                    if "bilinear" in row else "– | – (nothing to resample)")  # fmt: skip
        lines.append(f"| {row['layout']} | {row['threads']} | {row['gdal']:.1f} | {row['nearest']:.1f} | "
                     f"{row['nearest_ratio']:.2f}× ({row['nearest_cpu_ratio']:.2f}×) | {bilinear} |")  # fmt: skip
    lines += ["", ("Layouts: *S2 COG, N² tiles*: one DEFLATE COG per band (10/20 m), N²-px tiles; *S2 folder*: per-band "
                   "tiled GeoTIFFs (no overviews) at 10/20 m and B01/B09 at 60 m beside them (listed as ignored: "
                   "not Clay v0 bands); *13-band stack*: one float32 GeoTIFF of Clay v0's 13 bands at 10 m."),
              "", ("Ratio: wall-clock chips/s against GDAL's; in brackets, chips per CPU second of the reading "
                   "threads against GDAL's (steadier where other processes share the cores).")]  # fmt: skip
    return "\n".join(lines)


#: The layouts ``--layout`` picks from (``cog``: one row per ``--block``).
LAYOUTS = ("cog", "folder", "stack")


def layouts(kinds: tuple[str, ...], blocks: tuple[int, ...], size: int, tmp: Path):
    """(label, scene path, engine bands, whether bilinear differs) per layout row, written on demand."""
    for kind in kinds:
        if kind == "cog":
            for block in blocks:
                yield (
                    f"S2 COG, {block}² tiles",
                    lambda b=block: write_tile(tmp / f"S2-tile-{b}", size, b),
                    S2_BANDS,
                    True,
                )
        elif kind == "folder":
            yield "S2 folder (10/20/60 m)", lambda: write_s2_folder(tmp / "S2-folder", size), S2_BANDS, True
        else:
            yield (
                "13-band stack",
                lambda: write_stack(tmp / "stack" / "stack-13band.tif", size),
                BAND_NAMES,
                False,
            )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", type=click.IntRange(min=512), default=3072, show_default=True,
              help="Input side in 10 m pixels (a multiple of 6 keeps the 60 m grid whole).")  # fmt: skip
@click.option("--layout", "kinds", type=click.Choice(LAYOUTS), multiple=True,
              help="Input layouts (repeatable; default all): per-band COGs, an S2 folder, a 13-band stack.")  # fmt: skip
@click.option(
    "--block",
    "blocks",
    type=click.IntRange(min=64),
    multiple=True,
    help=f"COG tile side in pixels (repeatable; default {' '.join(map(str, BLOCKS))}).",
)
@click.option(
    "--threads",
    "thread_counts",
    type=click.IntRange(min=1),
    multiple=True,
    help="Reader threads (default 1 2).",
)
@click.option(
    "--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved timed rounds."
)
@click.option("--shared", is_flag=True, help="Say in the results that the machine was running other work.")
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True
)
def main(size, kinds, blocks, thread_counts, rounds, shared, out) -> None:
    """The runtime's chip reads (nearest and bilinear) against GDAL's native-resolution decode of the
    same windows on S2 per-band COGs, an S2 folder and a 13-band stack (see the module docstring)."""
    thread_counts = thread_counts or (1, 2)
    demo = read_engine_metadata(DEMO_ENGINE)  # the ten S2 bands; the resampling is set per row
    loads = [os.getloadavg()[0]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="clay-reads-") as tmp:
        for label, write, bands, resamples in layouts(kinds or LAYOUTS, blocks or BLOCKS, size, Path(tmp)):
            path = write()
            engine = demo if bands == S2_BANDS else replace(
                demo, bands=BAND_NAMES, band_means=BAND_MEANS, band_stds=BAND_STDS)  # fmt: skip
            methods = ("nearest", "bilinear") if resamples else ("nearest",)
            scenes = {how: open_scene(path, replace(engine, resampling=how), RunOptions(resampling=how))
                      for how in methods}  # fmt: skip
            modes = {s.mode for s in scenes["nearest"].sources}
            assert modes == ({"direct", "repeat"} if resamples else {"direct"}), modes
            if resamples:
                assert {s.mode for s in scenes["bilinear"].sources} == {"direct", "resample"}
            rates = {t: {how: [] for how in ("gdal", *methods)} for t in thread_counts}
            cpu_rates = {t: {how: [] for how in ("gdal", *methods)} for t in thread_counts}
            for r in range(rounds):
                for t in thread_counts:
                    for how in ("gdal", *methods):
                        scene = scenes["nearest" if how == "gdal" else how]
                        wall, cpu = timed(scene, t, "gdal" if how == "gdal" else "runtime")
                        rates[t][how].append(wall)
                        cpu_rates[t][how].append(cpu)
                    click.echo(f"{label}, round {r + 1}, {t} thread(s): "
                               + ", ".join(f"{h} {v[-1]:.1f}" for h, v in rates[t].items()), err=True)  # fmt: skip
                loads.append(os.getloadavg()[0])
            chips, chip_size = len(scenes["nearest"].chips()), scenes["nearest"].chip_size
            ignored = [Path(p).name for p in scenes["nearest"].ignored]
            for t, measured in rates.items():
                row = {"layout": label, "threads": t, "ignored_files": ignored,
                       **{how: statistics.median(values) for how, values in measured.items()}}  # fmt: skip
                per_cpu = cpu_rates[t]
                for how in methods:
                    row[f"{how}_ratio"] = statistics.median(
                        a / g for a, g in zip(measured[how], measured["gdal"])
                    )
                    row[f"{how}_cpu_ratio"] = statistics.median(
                        a / g for a, g in zip(per_cpu[how], per_cpu["gdal"])
                    )
                rows.append(row | {"per_round": measured, "per_round_chips_per_cpu_s": per_cpu})
            shutil.rmtree(path if path.is_dir() else path.parent)
    load = f"1-min load average {min(loads):.1f}–{max(loads):.1f} while measured"
    report = {**measured_on(), "shared": shared, "load": load, "load_averages": loads, "platform": platform.platform(),
              "versions": package_versions(), "gdal": rasterio.__gdal_version__, "size": size,
              "layouts": list(kinds or LAYOUTS), "blocks": list(blocks or BLOCKS), "chips": chips,
              "chip_size": chip_size, "rounds": rounds, "threads": list(thread_counts), "rows": rows}  # fmt: skip
    write_results(out, "reads-s2-cog", report, markdown(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))
    main()
