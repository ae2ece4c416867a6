"""``clay-run``: GeoTIFF scenes → GeoParquet chip embeddings, on TensorRT or ONNX Runtime."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click
import pyarrow.parquet as pq

from .engine import BACKENDS, EngineError, open_engine
from .pipeline import RunOptions, embed_scene
from .scene import EDGE_MODES, SAR_UNITS, SceneError, SceneFiles, discover_scenes, gsd_warning, open_scene, parse_date

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_ENGINE = DEMO_DIR / "clay-demo-tiny-s2.int8.onnx"
DEMO_SCENE = DEMO_DIR / "T48QUE-20200223"
DEMO_STORY = (
    "The picture shows the Sentinel-2 scene (left) beside the embeddings as colour: the first three "
    "principal components of the per-patch embeddings, standardised within each chip (middle, one "
    "32 px = 320 m cell each), and of the chip embeddings (right, one 512 px square per chip). Cells "
    "the model finds alike get alike colours. With these small demo weights the large dark area north "
    "of the river is one blue-violet block, the reservoir and the ponds south of the river are cyan, "
    "and the fields fall into greens, yellows and reds; the river (narrower than a third of a cell) and "
    "the town do not stand out, and chip seams show because each chip is standardised on its own."
)

def output_paths(scenes: list[SceneFiles], out: Path | None) -> list[Path]:
    """One ``<scene>.parquet`` per scene in ``out`` (a directory), or ``out`` itself for one scene
    when it ends in ``.parquet``."""
    if out is not None and out.suffix == ".parquet":
        if len(scenes) > 1:
            raise SceneError(f"{out}: several scenes need --out to be a directory")
        targets = [out]
    else:
        folder = out or Path("clay-embeddings")
        targets = [folder / f"{scene.name}.parquet" for scene in scenes]
    if len(set(targets)) != len(targets):
        raise SceneError("two scenes have the same file name; run them into different --out directories")
    return targets


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".clay-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SceneError(f"{folder}: output directory is not writable ({exc.strerror or exc})") from None


class Progress:
    """tqdm bar on a terminal, a plain log line every ~10 % otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.seen, self.next_log = total, label, 0, 0.1
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="chip", file=sys.stderr)

    def __call__(self, chips: int, done: int) -> None:
        self.seen += chips
        if self.bar is not None:
            self.bar.update(chips)
        elif self.seen / max(self.total, 1) >= self.next_log or self.seen == self.total:
            click.echo(f"{self.label}: {self.seen}/{self.total} chips", err=True)
            self.next_log = self.seen / max(self.total, 1) + 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenes", nargs=-1, type=click.Path(path_type=Path))
@click.option("--engine", "engine_path", type=click.Path(path_type=Path),
              help="clay.plan (TensorRT) or clay*.onnx (ONNX Runtime) written by clay-export.")
@click.option("--demo", is_flag=True,
              help="Embed the bundled real Sentinel-2 scene with the bundled demo engine (S2-only, int8, "
                   "demo weights — not Clay v0) and draw the preview. No SCENE or --engine needed.")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG: true colour beside the patch and chip embeddings as colour (one scene).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default ./clay-embeddings), or a .parquet file for one scene.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto picks the fastest present: tensorrt for a .plan, else onnx-cuda, else onnx-cpu.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=None,
              help="Chips per engine call (default: the engine's preferred batch).")
@click.option("--edge", type=click.Choice(EDGE_MODES), default="shift", show_default=True,
              help="Right/bottom remainders: a last chip shifted inside the scene, padded (edge pixels "
                   "replicated), or dropped (the Clay release). Scenes smaller than a chip are padded.")
@click.option("--max-nodata", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Skip (and count) chips with a larger nodata fraction; nodata is filled with band means.")
@click.option("--date", "date_text", default=None, help="Acquisition date YYYY-MM-DD (overrides the file's tags).")
@click.option("--patch-embeddings", is_flag=True,
              help="Also write <scene>.patches.parquet: one row per 32-px patch (engine exported with them).")
@click.option("--sar-units", type=click.Choice(SAR_UNITS), default="auto", show_default=True,
              help="Units of VH/VV. Clay v0 expects linear power; dB is converted (10^(dB/10)) while reading. "
                   "auto: the band's unit metadata, else refuse a mostly negative (dB) band.")
@click.option("--s2-offset", type=float, default=0.0, show_default=True,
              help="Subtract this from S2 DNs, e.g. 1000 for L2A baseline 04.00+ (from 2022-01-25). Off by default: "
                   "Clay v0 was trained on such data without removing the offset.")
@click.option("--resume", is_flag=True, help="Skip scenes whose output file is already complete.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for ONNX Runtime.")
def main(scenes, engine_path, demo, preview, out, backend, batch_size, edge, max_nodata, date_text, patch_embeddings, sar_units,
         s2_offset, resume, threads) -> None:  # fmt: skip
    """Embed GeoTIFF SCENES with a Clay engine into GeoParquet.

    A SCENE is a multi-band GeoTIFF, or single-band files named as bands (B02.tif, B2.tif, VV.tif...)
    given together or found in one folder (sub-folders too: an S2 and an S1 product side by side);
    they are resampled bilinearly onto the grid of the finest file while reading. A folder of
    multi-band files gives one scene per file.

    Each scene needs a CRS, the engine's bands (13 in Clay order, or named by band description or
    file name: B02…B12, VH, VV, DEM; extra bands are ignored) and an acquisition date (a 'date'
    tag, the TIFF DateTime tag, or --date).
    """
    try:
        date = parse_date(date_text) if date_text else None
    except ValueError:
        sys.exit(f"clay-run: --date {date_text}: expected YYYY-MM-DD")
    if demo:
        if scenes or engine_path:
            sys.exit("clay-run: --demo runs the bundled scene and engine; give no SCENE and no --engine")
        folder = out or Path(f"clay-demo-{datetime.now():%Y%m%d-%H%M%S}")
        scenes, engine_path, patch_embeddings = (DEMO_SCENE,), DEMO_ENGINE, True
        out, preview = folder / "demo.parquet", folder / "demo-preview.png"
    elif not scenes or engine_path is None:
        sys.exit("clay-run: give SCENE... and --engine PATH (or --demo); see clay-run --help")
    try:
        scene_files = discover_scenes(scenes)
        targets = output_paths(scene_files, out)
        engine = open_engine(engine_path, backend, threads)
        # validate every scene before any work starts
        opened = [open_scene(s, engine.metadata, date, sar_units, s2_offset) for s in scene_files]
        for scene in opened:
            warning = gsd_warning(scene)
            if warning:
                click.echo(f"clay-run: warning: {warning}", err=True)
        for folder in {t.parent for t in targets}:
            ensure_writable(folder)
        click.echo(f"clay-run: engine {engine_path.name} on {engine.describe()}", err=True)
        if preview is not None and len(opened) != 1:
            raise SceneError(f"--preview {preview}: draws one scene, {len(opened)} were given")
        options = RunOptions(batch_size=batch_size, edge=edge, max_nodata=max_nodata, patch_embeddings=patch_embeddings)
        totals = [0, 0, 0.0]
        for scene, target in zip(opened, targets):
            if resume and target.exists():
                click.echo(f"clay-run: {scene.name}: {target} is complete, skipped (--resume)", err=True)
                continue
            progress = Progress(len(scene.chips(edge)), scene.name)
            try:
                result = embed_scene(engine, scene, target, options, progress)
            finally:
                progress.close()
            totals[0] += result.chips_done
            totals[1] += result.chips_skipped
            totals[2] += result.seconds
            if preview is not None:
                from .preview import render_preview

                patches = pq.read_table(result.patches) if result.patches else None
                render_preview(scene, pq.read_table(result.output), patches, engine.metadata, engine_path.name, preview)
            click.echo(f"clay-run: {scene.name}: {result.chips_done} chips, {result.chips_skipped} skipped "
                       f"(nodata > {max_nodata:g}), {result.chips_per_second:.2f} chips/s → {result.output}", err=True)  # fmt: skip
    except (SceneError, EngineError) as exc:
        sys.exit(f"clay-run: {exc}")
    except KeyboardInterrupt:
        sys.exit("clay-run: interrupted; finished scenes are kept, rerun with --resume to continue")
    if demo:
        click.echo(f"clay-run: demo outputs in {out.parent}/: demo.parquet (one row per chip), "
                   f"demo.patches.parquet (one row per 32 px patch), demo-preview.png", err=True)  # fmt: skip
        click.echo(f"clay-run: {DEMO_STORY}", err=True)
    elif preview is not None:
        click.echo(f"clay-run: preview written to {preview}", err=True)
    rate = totals[0] / totals[2] if totals[2] else 0.0
    click.echo(f"clay-run: done: {totals[0]} chips, {totals[1]} skipped, {totals[2]:.1f} s, {rate:.2f} chips/s, "
               f"backend {engine.backend}, output {targets[0].parent if len(targets) > 1 else targets[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
