"""What a patch raster costs and loses: ``python -m clay.benchmarks.patch_raster [--rounds 3]``.

On the bundled demo scene with the bundled demo engine (or ``--engine``/``--scene``), in interleaved
rounds: clay-run's pipeline without a raster, with a float32 raster and with an int8 raster (each
with the patch GeoParquet, for comparison), measuring

- **bytes per km²** of each file (the scene's area from its geotransform: UTM metres);
- **time**: the run's wall time and its ``patch raster`` stage (rows as chips arrive, and the COG
  built on publish, on the writer's thread beside the engine), as a share of the wall time;
- **int8 error**: cosine per cell between the int8 raster, dequantised by its GDAL scale/offset, and
  the float32 raster (min, 1st percentile, median);
- **memory**: RSS growth of :class:`~clay.runtime.outputs.patch_raster.PatchRasterWriter` on a
  10 980-px-wide scene at 768 dimensions (a Sentinel-2 tile's width, Clay v0's width), 1× (2 048 px)
  and 5× (10 240 px) long, while rows stream in and at its peak with publishing (a subprocess each).

Writes ``patch-raster.json`` and ``.md`` into ``--out``; ``--picture`` also draws the README's
similarity map (docs/similarity-map.png): true colour beside the cosine of every cell to one cell.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import click
import numpy as np
import rasterio
from clay.runtime.api import ClayEmbedder
from clay.runtime.cli import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.options import RunOptions, cpu_count
from clay.runtime.timing import StageClock

from .report import DEFAULT_OUT, measured_on, write_results

MODES = ("none", "float32", "int8")
#: The README's example cell: on the dark, wet area north of the river in the demo scene.
QUERY_CELL = (8, 12)

MEMORY_PROBE = textwrap.dedent("""
    import json, sys, time
    from datetime import date
    from pathlib import Path
    import numpy as np
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from clay.runtime.scenes.grid import chip_grid
    from clay.runtime.outputs.overlap import GroundClaims
    from clay.runtime.outputs.patch_grid import CellGrid
    from clay.runtime.outputs.patch_raster import PatchRasterWriter
    from clay.runtime.scenes.reader import gdal_env
    from clay.runtime.scenes.scene import Scene

    def rss(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) // 1024

    folder, height, width, dim, dtype = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    scene = Scene(folder / "s.tif", "s", CRS.from_epsg(32648), Affine(10, 0, 300000, 0, -10, 2000000), width, height,
                  date(2020, 1, 1), (), np.zeros(0, np.float32), 512, 32)
    vectors = np.random.default_rng(0).normal(size=(2, 16, 16, dim)).astype(np.float32)
    with gdal_env():  # GDAL as clay-run configures its writer thread
        base = rss("VmRSS")
        start = time.perf_counter()
        chips = chip_grid(height, width, 512)
        claims = GroundClaims(CellGrid.of(scene.transform, width, height, 32), chips, 512)
        writer = PatchRasterWriter(folder / "s.patches.tif", scene, dim, dtype, {}, claims)
        for k in range(0, len(chips), 2):
            writer.write([claims.claim(c) for c in chips[k : k + 2]], vectors[: len(chips[k : k + 2])])
        written, streamed = rss("VmHWM") - base, time.perf_counter() - start
        writer.commit()
    print(json.dumps({"written_mb": written, "published_mb": rss("VmHWM") - base, "chips": len(chips),
                      "write_s": round(streamed, 2), "publish_s": round(time.perf_counter() - start - streamed, 2)}))
""")


def memory_growth(height: int, width: int = 10980, dim: int = 768, dtype: str = "float32") -> dict:
    """RSS growth (MB) of one patch raster written from random vectors, in a fresh interpreter:
    ``written_mb`` after every row streamed in, ``published_mb`` at the peak, publishing included;
    and the seconds spent writing rows and publishing."""
    with tempfile.TemporaryDirectory(prefix="clay-raster-memory-") as tmp:
        run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, tmp, str(height), str(width), str(dim), dtype],
                             capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"memory probe failed: {run.stderr.strip()[-500:]}")
    growth = json.loads(run.stdout)
    return {**growth, "cells_mb": -(-height // 32) * -(-width // 32) * dim * 4 / 2**20}


def cell_values(path: Path) -> np.ndarray:
    """``[rows, cols, dim]`` float64, dequantised by the bands' scale and offset, NaN where nodata."""
    with rasterio.open(path) as src:
        data = src.read(masked=True)
        values = data * np.array(src.scales)[:, None, None] + np.array(src.offsets)[:, None, None]
    return np.moveaxis(values.astype(np.float64).filled(np.nan), 0, -1)


def cosine_similarity(values: np.ndarray, row: int, col: int) -> np.ndarray:
    """Cosine of every cell's vector with cell (``row``, ``col``)'s: ``[rows, cols]``, NaN where nodata."""
    unit = values / np.linalg.norm(values, axis=-1, keepdims=True)
    return unit @ unit[row, col]


def run_once(embedder: ClayEmbedder, scene: Path, folder: Path, mode: str) -> dict:
    options = RunOptions(readers=embedder.options.readers, patch_embeddings=True, patch_raster=mode != "none",
                         raster_dtype="float32" if mode == "none" else mode)  # fmt: skip
    embedder.clock = StageClock()
    target = folder / mode / "scene.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = embedder.embed_scene_to(scene, target, options)
    wall = time.perf_counter() - start
    sizes = {"chips": result.output.stat().st_size, "patches": result.patches.stat().st_size}
    if result.raster is not None:
        sizes["raster"] = result.raster.stat().st_size
    opened = result.opened
    km2 = opened.width * opened.height * abs(opened.transform.determinant) / 1e6
    return {"wall_s": wall, "raster_s": embedder.clock.seconds.get("patch raster", 0.0), "chips": result.chips_done,
            "km2": km2, "bytes": sizes, "stages": dict(embedder.clock.seconds), "raster": result.raster}  # fmt: skip


def draw_similarity(scene: Path, raster: Path, picture: Path, embedder: ClayEmbedder) -> None:
    """True colour beside the similarity map of :data:`QUERY_CELL`, the query cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from clay.runtime.outputs.preview import true_colour

    similarity = cosine_similarity(cell_values(raster), *QUERY_CELL)
    opened = embedder.open_scene(scene)
    colour = true_colour(opened, opened.height, opened.width)
    figure, axes = plt.subplots(1, 2, figsize=(12, 6.2), constrained_layout=True)
    extent = (0, opened.width, opened.height, 0)
    axes[0].imshow(colour, extent=extent)
    axes[0].set_title("true colour (B04, B03, B02)", fontsize=10)
    shown = axes[1].imshow(similarity, cmap="magma", vmin=np.nanpercentile(similarity, 2), vmax=1,
                           extent=(0, 32 * similarity.shape[1], 32 * similarity.shape[0], 0))  # fmt: skip
    axes[1].set_title(f"cosine similarity to cell {QUERY_CELL} (demo.patches.tif, 320 m cells)", fontsize=10)
    for axis in axes:
        r, c = QUERY_CELL
        axis.add_patch(plt.Rectangle((32 * c, 32 * r), 32, 32, fill=False, edgecolor="cyan", linewidth=2))
        axis.set_xlim(0, opened.width)
        axis.set_ylim(opened.height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(shown, ax=axes[1], shrink=0.8)
    figure.suptitle("T48QUE 2020-02-23, demo engine (tiny, demo weights: not Clay v0)", fontsize=11)
    picture.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(picture, dpi=90)
    plt.close(figure)


def markdown(r: dict) -> str:
    rows = [f"| {m} | {r['bytes_per_km2'][m]['raster']:,.0f} | {r['bytes'][m]['raster']:,} | "
            f"{r['wall_s'][m]:.2f} | {r['raster_s'][m]:.2f} ({100 * r['raster_share'][m]:.1f} %) |"
            for m in ("float32", "int8")]  # fmt: skip
    c, mem = r["int8_cosine"], r["memory"]
    header = (f"Patch rasters on {r['cpu']} ({r['cores']} cores, shared), {r['engine']}, {r['scene']} ({r['km2']:.1f} "
              f"km², {r['chips']} chips), commit {r['commit'][:10]}, {r['date']}; medians of {r['rounds']} interleaved rounds.")
    beside = (f"Beside them: the patch GeoParquet {r['bytes_per_km2']['none']['patches']:,.0f} bytes per km² "
              f"({r['bytes']['none']['patches']:,} bytes), the chip GeoParquet {r['bytes_per_km2']['none']['chips']:,.0f}; "
              f"the run without a raster took {r['wall_s']['none']:.2f} s.")
    error = (f"int8 against float32, cosine per cell ({c['cells']} cells): min {c['min']:.6f}, 1st percentile "
             f"{c['p1']:.6f}, median {c['median']:.6f}.")
    memory = (f"Memory (RSS growth of the writer, {mem['dim']} dims, {mem['width']} px wide, float32): 1× "
              f"({mem['one']['cells_mb']:.0f} MB of cells) {mem['one']['written_mb']} MB while streaming, "
              f"{mem['one']['published_mb']} MB at the peak with publishing; 5× ({mem['five']['cells_mb']:.0f} MB of "
              f"cells) {mem['five']['written_mb']} MB and {mem['five']['published_mb']} MB.")
    tile = (f"A whole 10980² tile at 768 dims ({mem['tile_float32']['chips']} chips, random vectors): rows written in "
            f"{mem['tile_float32']['write_s']:.2f} s, published in {mem['tile_float32']['publish_s']:.2f} s (float32) / "
            f"{mem['tile_int8']['write_s']:.2f} s and {mem['tile_int8']['publish_s']:.2f} s (int8) on the writer's thread.")
    table = ["| raster | bytes per km² | file bytes | run wall s | patch raster s (share of wall) |", "|---|---|---|---|---|"]
    return "\n".join([header, "", *table, *rows, "", beside, "", error, "", memory, "", tile, ""])  # fmt: skip


@click.command()
@click.option("--engine", "engine_path", type=click.Path(path_type=Path, exists=True), default=DEMO_ENGINE)
@click.option("--scene", type=click.Path(path_type=Path, exists=True), default=DEMO_SCENE)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
@click.option("--picture", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw the similarity map (the README's docs/similarity-map.png).")  # fmt: skip
def main(engine_path: Path, scene: Path, rounds: int, out: Path, picture: Path | None) -> None:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="clay-raster-") as tmp, ClayEmbedder(
        engine_path, options=RunOptions(readers=cpu_count())
    ) as embedder:
        for k in range(rounds):
            for mode in MODES:
                runs[mode].append(run_once(embedder, scene, Path(tmp) / str(k), mode))
            click.echo(f"round {k + 1}: " + ", ".join(f"{m} {runs[m][-1]['wall_s']:.2f} s" for m in MODES), err=True)
        float32, int8 = cell_values(runs["float32"][-1]["raster"]), cell_values(runs["int8"][-1]["raster"])
        valued = ~np.isnan(float32).any(axis=-1)
        cos = (float32 * int8).sum(-1) / np.linalg.norm(float32, axis=-1) / np.linalg.norm(int8, axis=-1)
        cos = cos[valued]
        if picture is not None:
            draw_similarity(scene, runs["float32"][-1]["raster"], picture, embedder)
        engine = embedder.engine
        engine_name = f"{engine.path.name} ({engine.metadata.model_size}, {engine.metadata.dim} dims)"
    click.echo("memory: 1x and 5x scenes", err=True)
    memory = {"dim": 768, "width": 10980, "one": memory_growth(2048), "five": memory_growth(5 * 2048),
              "tile_int8": memory_growth(10980, dtype="int8"), "tile_float32": memory_growth(10980)}
    first = runs["none"][0]
    report = {
        **measured_on(), "rounds": rounds, "engine": engine_name,
        "scene": scene.name, "km2": first["km2"], "chips": first["chips"],
        "bytes": {m: runs[m][-1]["bytes"] for m in MODES},
        "bytes_per_km2": {m: {k: v / first["km2"] for k, v in runs[m][-1]["bytes"].items()} for m in MODES},
        "wall_s": {m: statistics.median(r["wall_s"] for r in runs[m]) for m in MODES},
        "raster_s": {m: statistics.median(r["raster_s"] for r in runs[m]) for m in MODES},
        "raster_share": {m: statistics.median(r["raster_s"] / r["wall_s"] for r in runs[m]) for m in MODES},
        "stages": {m: runs[m][-1]["stages"] for m in MODES},
        "int8_cosine": {"cells": int(cos.size), "min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
                        "median": float(np.median(cos))},
        "memory": memory,
    }  # fmt: skip
    write_results(out, "patch-raster", report, markdown(report))


if __name__ == "__main__":
    main()
