"""``clay-run``: GeoTIFF scenes → GeoParquet chip embeddings, on TensorRT or ONNX Runtime."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import click
import pyarrow.parquet as pq

from .api import ClayEmbedder, check_patch_embeddings, prepare_output_folder, remove_if_empty
from .console import quiet_known_warnings, require_extra
from .demo import DEMO_ENGINE, DEMO_SCENE, resolve_engine
from .engines.base import EngineError, EngineUnavailable
from .engines.choice import BACKENDS, sensor_keys
from .errors import SceneError, first_line
from .formats import describe_formats
from .metadata import EngineMetadata
from .options import DEFAULT_HTTP_TIMEOUT, EDGE_MODES, RASTER_DTYPES, SAR_UNITS, RunOptions, cpu_count
from .outputs.lock import hold_folders
from .outputs.publish import OutputError, ScenePaths
from .outputs.stac_records import COLLECTION_FILE, write_catalogue
from .pipeline import SceneJob, SceneResult
from .ray_job import RayJobError, RunCounts, ray_cluster, run_on_ray
from .resampling import RESAMPLING, choose_resampling
from .scenes.dates import parse_date
from .scenes.discovery import discover_scenes
from .scenes.inputs import SceneFiles
from .scenes.scene import Scene, open_scene
from .sensors import SENSORS

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
    seen: dict[Path, SceneFiles] = {}
    for scene, target in zip(scenes, targets):
        if target in seen:
            raise SceneError(f"{seen[target].path} and {scene.path} would both be written to {target}; "
                             "run them into different --out directories")  # fmt: skip
        seen[target] = scene
    return targets


class Progress:
    """Chips as they are embedded: a tqdm bar on a terminal, whose total grows as scenes open (they
    open ahead of the chip stream); otherwise a plain line at most every ``every`` seconds and at the end."""

    def __init__(self, scenes: int, every: float = 10.0) -> None:
        self.scenes, self.opened, self.total, self.seen = scenes, 0, 0, 0
        self.every, self.start, self.last = every, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="chip", file=sys.stderr)

    def opened_scene(self, chips: int) -> None:
        self.opened += 1
        self.total += chips
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def __call__(self, scene: str, chips: int) -> None:
        self.seen += chips
        if self.bar is not None:
            self.bar.set_description(scene)
            self.bar.update(chips)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or (self.opened == self.scenes and self.seen == self.total):
            self.last = now
            rate = self.seen / max(now - self.start, 1e-9)
            click.echo(f"clay-run: {self.seen}/{self.total} chips of {self.opened}/{self.scenes} scenes opened "
                       f"({scene}), {rate:.2f} chips/s", err=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RayProgress:
    """``--ray``: one line of scenes and chips done and the rate, at most every ``every`` seconds
    and at the end (rows come back from the cluster in batches, not chip by chip)."""

    def __init__(self, every: float = 2.0) -> None:
        self.every, self.last, self.shown = every, -float("inf"), None

    def __call__(self, counts: RunCounts) -> None:
        now, shown = time.perf_counter(), (counts.scenes_done, counts.chips_done)
        if (counts.final and shown != self.shown) or now - self.last >= self.every:
            self.last, self.shown = now, shown
            click.echo(f"clay-run: ray: {counts.scenes_done}/{counts.scenes} scenes, {counts.chips_done}/{counts.chips} "
                       f"chips, {counts.chips_per_second:.1f} chips/s", err=True)  # fmt: skip


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenes", nargs=-1)  # strings: pathlib would fold the // of https:// URIs
@click.option("--engine", "engine_path", type=click.Path(path_type=Path),
              help="An artifact written by clay-export, or its output folder (the artifact for the backend is "
                   f"picked): {describe_formats()}. 'demo': the bundled demo engine (unless a file or folder named demo is "
                   "in the working directory).")
@click.option("--demo", is_flag=True,
              help="Embed the bundled real Sentinel-2 scene with the bundled demo engine (S2-only, int8, "
                   "demo weights — not Clay v0) and draw the preview. No SCENE or --engine needed.")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG: true colour beside the patch and chip embeddings as colour (one scene).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default ./clay-embeddings), or a .parquet file for one scene.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: the fastest backend present that the artifact is made for (tensorrt, onnx-cuda, then on "
                   "the CPU openvino-cpu's bf16 where the CPU has AMX, else onnx-cpu's int8); the engine line says why.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=None,
              help="Chips per engine call (default: the engine's preferred batch).")
@click.option("--readers", type=click.IntRange(min=1), default=None,
              help=f"Chip-reader threads (default: one per core, {cpu_count()} here).")
@click.option("--edge", type=click.Choice(EDGE_MODES), default="shift", show_default=True,
              help="Right/bottom remainders: a last chip shifted inside the scene, padded (edge pixels "
                   "replicated), or dropped (the Clay release). Scenes smaller than a chip are padded.")
@click.option("--max-nodata", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Skip (and count) chips with a larger nodata fraction; nodata is filled with band means.")
@click.option("--date", "date_text", default=None, help="Acquisition date YYYY-MM-DD (overrides the file's tags).")
@click.option("--patch-embeddings", is_flag=True,
              help="Also write <scene>.patches.parquet: one row per patch of the engine (Clay v0: 32 px, v1.5: 8 px; engine "
                   "exported with them).")
@click.option("--patch-raster", is_flag=True,
              help="Also write <scene>.patches.tif: the patch embeddings as a Cloud-Optimized GeoTIFF, one pixel per "
                   "patch-sized cell of the scene's grid (Clay v0: 32 px, v1.5: 8 px), one band per dimension (engine exported "
                   "with --patch-embeddings).")
@click.option("--raster-dtype", type=click.Choice(RASTER_DTYPES), default="float32", show_default=True,
              help="Type of --patch-raster's cells: float32 (as computed, nodata NaN) or int8 (8-bit codes with a per-band "
                   "scale and offset that GDAL, rasterio and rioxarray apply, stored as unsigned bytes that every GDAL "
                   "since 2.x reads alike; code 0 is nodata). float16 is refused: GDAL 3.10 has no Float16 type.")
@click.option("--sar-units", type=click.Choice(SAR_UNITS), default="auto", show_default=True,
              help="Units of VH/VV. Clay v0 expects linear power; dB is converted (10^(dB/10)) while reading. "
                   "auto: the band's unit metadata, else refuse a mostly negative (dB) band.")
@click.option("--s2-offset", type=float, default=None,
              help="Subtract this from every scene's S2 DNs (e.g. 0 or 1000), overriding what each scene declares. "
                   "Default: per scene, from its metadata (GDAL scale/offset, BOA_ADD_OFFSET, processing baseline "
                   "04.00+ → 1000), to the engine's harmonised DNs (no +1000 offset); nothing declared: none removed.")
@click.option("--resampling", type=click.Choice(RESAMPLING), default=None,
              help="How bands off the scene's grid (S2's 20 m bands, S1, the DEM) are resampled onto it. Default: as "
                   "the engine's metadata says its weights were trained (Clay v0: nearest; the demo weights: bilinear; "
                   "an engine that does not say: bilinear). Nearest from an aligned grid k times coarser reads the "
                   "band at its own resolution and repeats each pixel k×k. Recorded in the outputs' metadata.")
@click.option("--sensor", default=None, metavar="NAME",
              help="Clay v1.5: the sensor of every scene (" + ", ".join(SENSORS) + "), instead of what each scene's STAC "
                   "Item, product names or band names say. With an engine folder of several sensors, each scene is "
                   "embedded by its sensor's artifact; a scene of another sensor, or one whose sensor cannot be told "
                   "(two possible, or none), is refused in one line.")
@click.option("--resume", is_flag=True, help="Skip scenes whose outputs are complete (their chip file, and patch file "
                                            "and patch raster when asked for, published); clear what a killed run left.")
@click.option("--keep-going", is_flag=True, help="When a scene fails, finish the others and list the failures at the end "
                                                "(the exit code is still 1).")
@click.option("--http-timeout", type=click.FloatRange(min=1), default=DEFAULT_HTTP_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="Remote files and STAC Items (https://, /vsicurl/, /vsis3/...): a connection or a transfer that makes "
                   "no progress (under 1 KiB/s) for this long is retried, 3 times, then fails its scene in one line "
                   "(with --keep-going the others go on); any one request may take 10x this in all.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for ONNX Runtime or OpenVINO (with --ray: per engine actor, and the CPUs each reserves).")
@click.option("--combine", is_flag=True,
              help="Embed every STAC Item given (arguments, ItemCollections, manifest lines) as one scene: an S2 item, "
                   "an S1 item and a DEM item of one place, each band from exactly one of them, on the finest S2 grid "
                   "with the S2 date. Without it each Item is a scene of its own.")
@click.option("--stac", is_flag=True,
              help="Also catalogue the outputs in STAC (Embedding extension, emb:): <scene>.item.json beside each "
                   "scene's files and collection.json in each output folder, hrefs relative to them.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray Data: chip reads in CPU tasks, the engine in a pool of actors (one per GPU, else one "
                   "per CPU), the same files. Connects to RAY_ADDRESS when set, else starts a local Ray. Implies "
                   "--keep-going; --readers does not apply. Needs the ray extra.")
def main(scenes, engine_path, demo, preview, out, backend, batch_size, readers, edge, max_nodata, date_text,
         patch_embeddings, patch_raster, raster_dtype, sar_units, s2_offset, resampling, sensor, resume, keep_going, http_timeout,
         threads, combine, stac, use_ray) -> None:  # fmt: skip
    """Embed GeoTIFF SCENES with a Clay engine into GeoParquet.

    A SCENE is a multi-band GeoTIFF, or single-band files named as bands (B02.tif, B2.tif, VV.tif...)
    given together or found in one folder (sub-folders too: an S2 and an S1 product side by side;
    other files there, such as visual.tif or SCL.tif, are ignored and listed; a Sentinel-2 SAFE
    product's JPEG 2000 images, …_B02_10m.jp2, are per-band files, each band taken at its native
    resolution); they are resampled
    onto the grid of the finest file holding S2 bands (ground distance) while reading, as the
    engine's weights were trained (nearest or bilinear, see --resampling). A
    folder of multi-band files gives one scene per file. A SCENE may also be a GDAL-readable URI (/vsis3/...,
    s3://..., https://...), a STAC Item (.json file or URL; its band assets, dates, scale/offset
    and S2 offset convention as the Item declares them), an ItemCollection (one scene per Item,
    named after its id), or a .txt manifest listing one scene a line.

    Each scene needs a CRS and a geotransform, the engine's bands (13 in Clay order, or named by band
    description or file name: B02…B12, VH, VV, DEM; extra bands are ignored) and a sensing date
    (acquisition tags, a product name, a YYYYMMDD date in a file or folder name, the TIFF DateTime
    last, or --date). Masks, nodata, GDAL scale/offset, units and each scene's S2 offset convention
    are applied per scene and recorded in the outputs' metadata. With a Clay v1.5 engine folder, each
    scene's sensor (its STAC Item, product names, band names, or --sensor) picks the artifact set that
    embeds it, and its bands are that sensor's (Landsat SR_B2…, NAIP red/green/blue/NIR…). The summary
    line says where the time went.
    """
    quiet_known_warnings()
    _SAID.clear()  # once per run: main() may run several times in one process (tests, the Ray driver's caller)
    if use_ray:
        require_extra("clay-run --ray", "ray")
    try:
        date = parse_date(date_text) if date_text else None
    except ValueError:
        sys.exit(f"clay-run: --date {date_text}: expected YYYY-MM-DD")
    if demo:
        if scenes or engine_path:
            sys.exit("clay-run: --demo runs the bundled scene and engine; give no SCENE and no --engine")
        folder = out or Path(f"clay-demo-{datetime.now():%Y%m%d-%H%M%S}")
        scenes, engine_path, patch_embeddings, patch_raster = (DEMO_SCENE,), DEMO_ENGINE, True, True
        out, preview = folder / "demo.parquet", folder / "demo-preview.png"
    elif not scenes or engine_path is None:
        sys.exit("clay-run: give SCENE... and --engine PATH (or --demo); see clay-run --help")
    else:
        engine_path = resolve_engine(engine_path)  # --engine demo: the bundled engine
    try:
        options = RunOptions(batch_size=batch_size, edge=edge, max_nodata=max_nodata, patch_embeddings=patch_embeddings,
                             patch_raster=patch_raster, raster_dtype=raster_dtype, date=date, sar_units=sar_units,
                             s2_offset=s2_offset, resampling=resampling, readers=readers, keep_going=keep_going or use_ray,
                             resume=resume, http_timeout=http_timeout, sensor=sensor)  # fmt: skip
    except ValueError as exc:
        sys.exit(f"clay-run: {exc}")
    failures: list[tuple[str, str]] = []
    created: list[Path] = []  # output folders this run made: removed again if it writes nothing there
    try:
        scene_files = discover_scenes(scenes, combine=combine, http_timeout=options.http_timeout)
        targets = output_paths(scene_files, out)
        if preview is not None and len(scene_files) != 1:
            raise SceneError(f"--preview {preview}: draws one scene, {len(scene_files)} to embed")
        folders = list(dict.fromkeys(target.parent for target in targets))
        for folder in folders:
            created += prepare_output_folder(folder)
        # One run per output folder, from the --resume check to the preview (a second is refused
        # in one line naming the first; see clay.runtime.outputs.lock).
        with hold_folders(folders + ([preview.parent] if preview is not None and preview.parent.is_dir() else [])):
            if use_ray:
                run_with_ray(engine_path, backend, threads, scene_files, targets, options, failures, preview, created)
            else:
                run_here(engine_path, backend, threads, scene_files, targets, options, failures, preview, created)
            if stac:
                catalogue(targets, options)
    except EngineUnavailable as exc:  # the engine cannot run on this machine: exit 2, as for a missing extra
        click.echo(f"clay-run: {exc}", err=True)
        sys.exit(2)
    except (SceneError, EngineError, OutputError, RayJobError, ValueError) as exc:
        sys.exit(f"clay-run: {exc}")
    except KeyboardInterrupt:
        sys.exit("clay-run: interrupted; finished scenes are kept, rerun with --resume to continue")
    except Exception as exc:
        if os.environ.get("CLAY_DEBUG"):
            raise
        sys.exit(f"clay-run: internal error ({type(exc).__name__}: {first_line(exc)}); rerun with CLAY_DEBUG=1 "
                 "for the traceback and report it")  # fmt: skip
    finally:
        remove_if_empty(created)
    if failures:
        click.echo(f"clay-run: {len(failures)} scene(s) failed:", err=True)
        for name, reason in failures:
            click.echo(f"clay-run:   {name}: {reason}", err=True)
        sys.exit(1)
    if demo:
        click.echo(f"clay-run: demo outputs in {out.parent}/: demo.parquet (one row per chip), "
                   f"demo.patches.parquet (one row per 32 px patch), demo.patches.tif (the patches as a "
                   f"Cloud-Optimized GeoTIFF, one band per dimension), demo-preview.png", err=True)  # fmt: skip
        click.echo(f"clay-run: {DEMO_STORY}", err=True)
    elif preview is not None:
        click.echo(f"clay-run: preview written to {preview}", err=True)


def run_here(engine_path: Path, backend: str, threads: int | None, scene_files: list[SceneFiles], targets: list[Path],
             options: RunOptions, failures: list, preview: Path | None, created: list[Path]) -> None:  # fmt: skip
    """The single-machine run: one engine, reader threads, the pipeline (which opens the scenes)."""
    with ClayEmbedder(engine_path, backend, threads, options) as embedder:
        if embedder.engine.fallback:
            click.echo(f"clay-run: {embedder.engine.fallback}", err=True)
        if embedder.sensors:
            click.echo(f"clay-run: engine folder {engine_path}: Clay v1.5 artifacts for {', '.join(embedder.sensors)}; "
                       "each scene is embedded by the artifact of its sensor", err=True)  # fmt: skip
        name = embedder.engine.path.name if not embedder.sensors else f"{embedder.engine.path.parent.name}/{embedder.engine.path.name}"
        click.echo(f"clay-run: engine {name} on {embedder.engine.describe()}"
                   f"{resampling_note(embedder.metadata, options)}", err=True)  # fmt: skip
        check_patch_embeddings(embedder.metadata, options.needs_patches, options.patch_request(cli=True))
        jobs = plan_jobs(scene_files, targets, options, created)
        start = time.perf_counter()
        results = run_jobs(embedder, jobs, options, failures)
        wall = time.perf_counter() - start
        for other in embedder.opened[1:]:  # a folder of sensors: the artifacts its scenes needed besides the first
            click.echo(f"clay-run: engine {other.path.parent.name}/{other.path.name} on {other.describe()}", err=True)
        draw_preview(preview, results, embedder.metadata, embedder.engine.path.name)
        ignored_files(results)
        stages = embedder.clock.summary() or "nothing ran"
        threads = embedder.options.reader_count
        summary(results, targets, wall, ", ".join(dict.fromkeys(e.backend for e in embedder.opened)),
                f"time in: {stages} ({threads} reader thread{'s' if threads != 1 else ''})")  # fmt: skip


def catalogue(targets: list[Path], options: RunOptions) -> None:
    """``--stac``: the STAC Items and Collection of every published scene of the run (resumed ones too)."""
    scenes = [ScenePaths.for_chip_file(t, options.patch_embeddings, options.patch_raster) for t in targets]
    parameters = {"edge": options.edge, "max_nodata": options.max_nodata, "raster_dtype": options.raster_dtype
                  if options.patch_raster else None}  # fmt: skip
    written = write_catalogue(scenes, parameters)
    collections = [p for p in written if p.name == COLLECTION_FILE]
    click.echo(f"clay-run: STAC: {len(written) - len(collections)} Item(s) and {', '.join(map(str, collections))}", err=True)


def resampling_note(metadata: EngineMetadata, options: RunOptions) -> str:
    """The end of the engine line: how bands off a scene's grid are resampled, and why (each scene's
    outputs record it too)."""
    method, why = choose_resampling(metadata.resampling, options.resampling, metadata.model)
    return f"; resampling: {method} ({why})"


def run_with_ray(engine_path: Path, backend: str, threads: int | None, scene_files: list[SceneFiles], targets: list[Path],
                 options: RunOptions, failures: list, preview: Path | None, created: list[Path]) -> None:  # fmt: skip
    """``--ray``: the scenes opened on this machine (the driver), then the job on Ray Data
    (:mod:`clay.runtime.ray_job`); Ray's start-up is reported apart from the run's speed."""
    if sensor_keys(Path(engine_path)) and len(sensor_keys(Path(engine_path))) > 1:
        raise EngineError(f"{engine_path}: --ray runs one artifact set; give one sensor's folder "
                          f"({', '.join(sensor_keys(Path(engine_path)))})")  # fmt: skip
    started = time.perf_counter()
    with ray_cluster() as cluster:
        engine = cluster.engine(engine_path, backend, threads)
        startup = time.perf_counter() - started
        if engine.fallback:
            click.echo(f"clay-run: {engine.fallback}", err=True)
        click.echo(f"clay-run: ray: {cluster.describe()}; engine {engine.name} on {engine.description}"
                   f"{resampling_note(engine.metadata, options)}", err=True)  # fmt: skip
        check_patch_embeddings(engine.metadata, options.needs_patches, options.patch_request(cli=True))
        jobs = open_jobs(engine.metadata, plan_jobs(scene_files, targets, options, created), options, failures)
        chips = sum(len(scene.chips(options.edge)) for scene, _ in jobs)
        layout = cluster.layout(engine, threads, -(-chips // (options.batch_size or engine.preferred_batch)))
        click.echo(f"clay-run: ray: {chips} chips in {len(jobs)} scene(s) on {layout.describe()}", err=True)
        start = time.perf_counter()
        results = report(run_on_ray(cluster, engine, jobs, options, RayProgress(), threads, layout), options, failures)
        wall = time.perf_counter() - start
        draw_preview(preview, results, engine.metadata, engine.name)
        ignored_files(results)
        summary(results, targets, wall, engine.backend,
                f"on Ray: {layout.describe()}; Ray start-up {startup:.1f} s not counted")  # fmt: skip


def draw_preview(preview: Path | None, results: list[SceneResult], metadata: EngineMetadata, engine_name: str) -> None:
    if preview is not None and results and results[0].paths and results[0].opened is not None:
        from .outputs.preview import render_preview

        result = results[0]
        patches = pq.read_table(result.patches) if result.patches else None
        render_preview(result.opened, pq.read_table(result.output), patches, metadata, engine_name, preview)


def plan_jobs(scene_files: list[SceneFiles], targets: list[Path], options: RunOptions, created: list[Path]) -> list[SceneJob]:
    """The scenes to embed and their files, before any is opened: output folders made (the ones made
    here added to ``created``) and checked writable, complete scenes skipped with --resume. The
    pipeline opens (validates) each scene ahead of its chips; a scene that fails then stops the run,
    or with --keep-going is listed as failed."""
    for folder in dict.fromkeys(target.parent for target in targets):
        created += prepare_output_folder(folder)
    jobs = []
    for files, target in zip(scene_files, targets):
        paths = ScenePaths.for_chip_file(target, options.patch_embeddings, options.patch_raster)
        if options.resume and paths.complete():
            click.echo(f"clay-run: {files.name}: {target} is complete, skipped (--resume)", err=True)
            continue
        jobs.append(SceneJob(files, paths))
    return jobs


def open_jobs(metadata: EngineMetadata, jobs: list[SceneJob], options: RunOptions, failures: list) -> list:
    """Open every scene on this machine's cores at once (the Ray driver needs them all before the
    dataset is built); a scene that fails stops the run, or with --keep-going is listed as failed."""
    with ThreadPoolExecutor(cpu_count()) as pool:
        opened = list(pool.map(lambda job: _try_open(job, metadata, options), jobs))
    ready = []
    for job, (scene, error) in zip(jobs, opened):
        if error is not None:
            if not options.keep_going:
                raise SceneError(error)
            failures.append((job.name, error))
            continue
        print_warnings(scene)
        ready.append((scene, job.paths))
    return ready


def _try_open(job: SceneJob, metadata: EngineMetadata, options: RunOptions) -> tuple[Scene | None, str | None]:
    try:
        return open_scene(job.scene, metadata, options), None
    except SceneError as exc:
        return None, str(exc)


#: The warnings said in this run: a warning of a kind that is not about one file (a date the model
#: cannot tell apart) is worded the same for every scene, and said once.
_SAID: set[str] = set()


def print_warnings(scene: Scene) -> None:
    for warning in scene.warnings:
        if warning not in _SAID:
            _SAID.add(warning)
            click.echo(f"clay-run: warning: {warning}", err=True)


def ignored_files(results: list[SceneResult]) -> None:
    """Once per run: the files (STAC assets, as ``<item id>:<asset key>``) beside the scenes' bands that
    were not bands of the engine."""
    entries = [p for r in results if r.opened is not None for p in r.opened.ignored]
    if entries:
        assets = sum(isinstance(p, str) for p in entries)
        kind = "file(s)" if not assets else "STAC asset(s)" if assets == len(entries) else "file(s) and STAC asset(s)"
        files = [str(p) for p in entries[:12] if not isinstance(p, str)]
        by_item: dict[str, list[str]] = {}
        for entry in (p for p in entries[:12] if isinstance(p, str)):
            item, _, key = entry.rpartition(":")
            by_item.setdefault(item, []).append(key)
        shown = "; ".join(([", ".join(files)] if files else []) + [f"{i}: {', '.join(k)}" for i, k in by_item.items()])
        more = f" and {len(entries) - 12} more" if len(entries) > 12 else ""
        click.echo(f"clay-run: ignored {len(entries)} {kind} that are not bands of the engine: {shown}{more}", err=True)


def run_jobs(embedder: ClayEmbedder, jobs: list[SceneJob], options: RunOptions, failures: list) -> list:
    progress = Progress(len(jobs))

    def opened(scene: Scene) -> None:
        print_warnings(scene)
        progress.opened_scene(len(scene.chips(options.edge)))

    try:
        return report(embedder.embed_scenes(jobs, options, progress, on_open=opened), options, failures)
    finally:
        progress.close()


def report(results: Iterable[SceneResult], options: RunOptions, failures: list) -> list[SceneResult]:
    """One line per scene as it finishes; failed scenes go to ``failures`` for the closing list."""
    done = []
    for result in results:
        done.append(result)
        if result.error:
            failures.append((result.name, result.error))
            continue
        sensor = (result.opened.applied.get("sensor") or {}) if result.opened is not None else {}
        said = f" [{sensor['name']}, bands {' '.join(sensor['bands_used'])}; {sensor['told_by']}]" if sensor else ""
        click.echo(f"clay-run: {result.name}: {result.chips_done} chips, {result.chips_skipped} skipped "
                   f"(nodata > {options.max_nodata:g}) → {result.output}{said}", err=True)  # fmt: skip
    return done


def summary(results: list, targets: list[Path], wall: float, backend: str, detail: str) -> None:
    """The closing line: chips, time, speed, backend, and where the time went."""
    done = sum(r.chips_done for r in results)
    skipped = sum(r.chips_skipped for r in results)
    rate = done / wall if wall else 0.0
    click.echo(f"clay-run: done: {done} chips, {skipped} skipped, {wall:.1f} s, {rate:.2f} chips/s, "
               f"backend {backend}, output {targets[0].parent if len(targets) > 1 else targets[0]}; {detail}")  # fmt: skip


if __name__ == "__main__":
    main()
