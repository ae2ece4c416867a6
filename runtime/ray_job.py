"""``clay-run --ray``: the same job on Ray Data, on a laptop or a cluster, writing the same files.

Every chip of every scene is one Ray Data row ``(scene index, chip index, window)``. A read
function (:func:`read_chips`, the runtime's own :func:`~clay.runtime.scenes.reader.read_chip`) turns
rows into pixels in CPU tasks; the engine runs in a pool of actors (:class:`EngineActor`), each
loading it once: one actor per GPU where the cluster has GPUs (the reads stay separate CPU tasks
and the pixels travel through the object store to the GPU's node), else one actor per
``cpus_per_actor`` CPUs, with the reads given the same resources so that Ray fuses them into the
actors and no pixel leaves the process that read it. The driver gathers the rows that come back
(embeddings only) by scene, keyed by chip index, and publishes a scene as soon as all its chips
are in, in grid order, through the local pipeline's own writer
(:func:`~clay.runtime.pipeline.write_chip_rows` and :class:`~clay.runtime.outputs.geoparquet.SceneOutput`):
same schema, metadata and atomic publication.

Faults: a chip that cannot be read becomes an error row, so a bad scene fails alone with its
one-line reason; Ray Data restarts an actor that dies and retries its batch (actor pools run with
unlimited restarts and task retries), and rows are keyed by (scene, chip), so a retried batch
cannot write a chip twice, and a scene is written only when every chip is back.

Ray is imported here only, lazily: the runtime stays importable without the ``ray`` extra.

Test hook (for the actor-death test, not a user setting): with ``CLAY_RAY_TEST_DIE_AFTER_BATCHES=N``
and ``CLAY_RAY_TEST_DIE_MARKER=PATH`` in the driver's environment, the first engine actor to be
handed a batch after finishing N creates PATH and dies (``os._exit(1)``) before running it; the
marker makes it happen once in the whole run, whatever Ray restarts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .engines.base import EngineError
from .engines.choice import open_engine
from .errors import SceneError, first_line
from .formats import CPU_BACKENDS
from .metadata import EngineMetadata
from .options import RunOptions, check_patch_embeddings, cpu_count
from .outputs.lock import claim_scenes, hold_folders
from .outputs.publish import OutputError, ScenePaths
from .pipeline import SceneResult, group_means, nothing_to_embed, open_output, scene_identity, write_chip_rows
from .scenes.grid import Chip
from .scenes.reader import gdal_env, read_chip
from .scenes.scene import Scene

DIE_AFTER_ENV = "CLAY_RAY_TEST_DIE_AFTER_BATCHES"
DIE_MARKER_ENV = "CLAY_RAY_TEST_DIE_MARKER"
#: Most engine batches in one Ray Data block while every actor still gets several blocks. Measured
#: here on 128 chips, the driver's CPU time per chip: 5-6 ms with one chip a block (13-14 ms with
#: the reads in separate tasks), 3.3 ms (5.6) with two batches of 2, 2.8-3.9 ms with four
#: (benchmarks/results/ray-cpu.md). Beyond :data:`MAX_BLOCKS` blocks grow further: the driver
#: schedules every block.
BATCHES_PER_BLOCK = 4
MAX_BLOCKS = 20_000

Progress = Callable[["RunCounts"], None]


class RayJobError(RuntimeError):
    """The Ray job could not start or stopped (cluster unreachable, engine not loadable there...)."""


@dataclass(frozen=True)
class EngineInfo:
    """The engine as the actors will run it, found where they run (a GPU node's backend, not the
    driver's): the artifact, its backend and metadata, and the batch it prefers."""

    artifact: str
    backend: str
    metadata: EngineMetadata
    preferred_batch: int
    description: str
    fallback: str | None = None  # why an export folder's plan was passed over (see open_engine)

    @property
    def name(self) -> str:
        return os.path.basename(self.artifact)


@dataclass(frozen=True)
class Layout:
    """Where the stages run. ``fused``: the reads get the actors' resources and run inside them."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: int
    fused: bool

    def describe(self) -> str:
        where = f"{self.gpus_per_actor} GPU each, reads in CPU tasks" if self.gpus_per_actor else (
            f"{self.cpus_per_actor:g} CPU each, reads fused into them" if self.fused else "reads in CPU tasks")  # fmt: skip
        return f"{self.actors} engine actor{'s' if self.actors > 1 else ''} ({where})"


@dataclass
class RunCounts:
    """What the progress line shows."""

    scenes_done: int
    scenes: int
    chips_done: int
    chips: int
    seconds: float
    final: bool = False

    @property
    def chips_per_second(self) -> float:
        return self.chips_done / self.seconds if self.seconds else 0.0


# --- the cluster ----------------------------------------------------------------------------------


class RayCluster:
    """A connection to Ray: ``RAY_ADDRESS`` when set (Ray's own convention; token auth through
    ``RAY_AUTH_MODE=token`` and the token's file or variable, read by Ray itself), the Ray this
    process is already connected to, or a local Ray sized to this machine, started here and shut
    down on :meth:`close`. Only a Ray started or connected here is shut down or disconnected."""

    def __init__(self) -> None:
        import ray

        _quiet_ray_data()
        self._owned = not ray.is_initialized()
        if self._owned:
            address = os.environ.get("RAY_ADDRESS")
            if address:
                _check_reachable(address)
            try:
                if address:
                    ray.init(logging_level=logging.ERROR, log_to_driver=False)
                else:
                    ray.init(num_cpus=cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
                             log_to_driver=False)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - connection failures come in many types
                where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "a local Ray"
                hint = ("; a cluster with token auth also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN "
                        "or RAY_AUTH_TOKEN_PATH)") if address and os.environ.get("RAY_AUTH_MODE") != "token" else ""  # fmt: skip
                raise RayJobError(f"cannot {'connect to' if address else 'start'} {where} ({first_line(exc)}){hint}") from None
        self.local = self._owned and not os.environ.get("RAY_ADDRESS")

    def close(self) -> None:
        import ray

        if self._owned and ray.is_initialized():
            ray.shutdown()

    def resources(self) -> tuple[dict, float]:
        """The cluster's total resources, and the most CPUs one node has (an actor fits one node)."""
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        return ray.cluster_resources(), max((node.get("CPU", 0.0) for node in nodes), default=1.0)

    def describe(self) -> str:
        import ray

        totals, _ = self.resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        kind = "local Ray" if self.local else "Ray cluster"
        return (f"{kind}, {nodes} node{'s' if nodes > 1 else ''}, {totals.get('CPU', 0):g} CPUs, "
                f"{totals.get('GPU', 0):g} GPUs")  # fmt: skip

    def layout(self, engine: EngineInfo, threads: int | None, batches: int) -> Layout:
        """One actor per GPU for a GPU engine; else one per ``threads`` CPUs (default 1, the
        engine's threads); never more actors than batches (each would load the engine for nothing)."""
        totals, node_cpus = self.resources()
        gpus = int(totals.get("GPU", 0))
        if gpus and engine.backend not in CPU_BACKENDS:
            return Layout(max(1, min(gpus, batches)), 1.0, 1, fused=False)
        per = float(max(1, min(threads or 1, int(node_cpus) or 1)))
        return Layout(max(1, min(int(totals.get("CPU", 1) // per), batches)), per, 0, fused=True)

    def engine(self, path: str, backend: str, threads: int | None) -> EngineInfo:
        """Resolve the engine where the actors will run it, with their resources: on a GPU node
        ``auto`` picks the GPU backend even when the driver has none."""
        import ray

        gpus = 1 if int(self.resources()[0].get("GPU", 0)) else 0
        probe = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_describe_engine)
        try:
            return ray.get(probe.remote(str(path), backend, threads))
        except Exception as exc:  # noqa: BLE001 - a task error wraps the engine's own
            raise _job_error(exc, f"the engine {path} cannot be loaded on the cluster") from None


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, in one line, where ``ray.init`` would wait minutes for a cluster that is not
    there (``host:port`` and ``ray://host:port`` addresses; ``auto`` is left to Ray)."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayJobError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc})") from None


def _describe_engine(path: str, backend: str, threads: int | None) -> EngineInfo:
    with open_engine(path, backend, threads) as engine:
        return EngineInfo(str(engine.path), engine.backend, engine.metadata, engine.preferred_batch, engine.describe(),
                          engine.fallback)  # fmt: skip


def _quiet_ray_data() -> None:
    """No progress bars, start-up banners or issue detectors: clay-run prints its own progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.issue_detectors_config.detectors = []
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# --- the stages (run in Ray workers) --------------------------------------------------------------

_gdal_entered = False


def read_chips(batch: dict[str, np.ndarray], scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    """Pixels of the chips in ``batch`` (raw float32 ``[C, size, size]``, nodata filled), their
    centres, dates and nodata fractions. A chip that cannot be read is a row with its one-line
    error (and zero pixels), so one bad scene does not stop the dataset."""
    global _gdal_entered
    if not _gdal_entered:  # GDAL's configuration for chip reads, entered once per worker
        gdal_env().__enter__()
        _gdal_entered = True
    count = len(batch["scene"])
    first = scenes[int(batch["scene"][0])]
    pixels = np.zeros((count, len(first.sources), first.chip_size, first.chip_size), np.float32)
    lonlat, date = np.zeros((count, 2), np.float32), np.zeros((count, 3), np.float32)
    nodata, errors = np.zeros(count, np.float64), np.full(count, "", dtype=object)
    for k in range(count):
        scene = scenes[int(batch["scene"][k])]
        chip = Chip(*(int(batch[name][k]) for name in ("row", "col", "height", "width")))
        try:
            _, nodata[k] = read_chip(scene, chip, pixels[k])
            lonlat[k] = scene.chip_centre(chip)
        except SceneError as exc:
            errors[k] = str(exc)
        except Exception as exc:  # noqa: BLE001 - anything else is still this chip's error only
            errors[k] = f"{scene.path}: {type(exc).__name__}: {first_line(exc)}"
        date[k] = (scene.date.year, scene.date.month, scene.date.day)
    return {"scene": batch["scene"], "chip": batch["chip"], "pixels": pixels, "lonlat": lonlat, "date": date,
            "nodata": nodata, "error": errors}  # fmt: skip


class EngineActor:
    """One engine, loaded once per actor: embeds the batch's readable chips under ``max_nodata``
    and passes the others through (zeros, with their error or skip flag)."""

    def __init__(self, artifact: str, backend: str, threads: int | None, max_nodata: float, patches: bool,
                 die_after: int | None = None, die_marker: str | None = None) -> None:  # fmt: skip
        self.engine = open_engine(artifact, backend, threads)
        self.max_nodata, self.patches = max_nodata, patches
        self.die_after, self.die_marker, self.batches = die_after, die_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._test_hook()
        errors, nodata = batch["error"], batch["nodata"]
        readable = np.array([not e for e in errors], bool)
        run = readable & (nodata <= self.max_nodata)
        meta = self.engine.metadata
        count, grid = len(errors), meta.chip_size // meta.patch_size
        embedding = np.zeros((count, meta.dim), np.float32)
        patches = np.zeros((count, grid, grid, meta.dim), np.float32) if self.patches else None
        if run.any():
            pixels = batch["pixels"] if run.all() else batch["pixels"][run]
            outputs = self.engine.infer(pixels, batch["lonlat"][run], batch["date"][run])
            embedding[run] = outputs["embedding"]
            if patches is not None:
                patches[run] = group_means(outputs["patch_embeddings"])
        result = {"scene": batch["scene"], "chip": batch["chip"], "nodata": nodata, "error": errors,
                  "skipped": readable & ~run, "embedding": embedding}  # fmt: skip
        if patches is not None:
            result["patches"] = patches
        self.batches += 1
        return result

    def _test_hook(self) -> None:
        if self.die_after is None or self.batches < self.die_after or not self.die_marker:
            return
        try:
            os.close(os.open(self.die_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another incarnation already died
        os._exit(1)


# --- the driver -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Gathered:
    """A scene's rows as they come back, keyed by chip index (a retried batch cannot file a chip twice)."""

    scene: Scene
    paths: ScenePaths
    chips: list[Chip]
    rows: dict[int, tuple] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.chips)


def chip_items(jobs: Sequence[tuple[Scene, ScenePaths]], edge: str) -> tuple[list[dict], list[list[Chip]]]:
    """One Ray Data row per chip, scene by scene in grid order, and every scene's chip grid."""
    grids = [scene.chips(edge) for scene, _ in jobs]
    items = [{"scene": s, "chip": k, "row": c.row, "col": c.col, "height": c.height, "width": c.width}
             for s, grid in enumerate(grids) for k, c in enumerate(grid)]  # fmt: skip
    return items, grids


def chips_per_block(chips: int, batch: int, actors: int) -> int:
    """Whole engine batches per block, so that every engine batch holds consecutive chips in scene
    and grid order, as the local pipeline's do (an engine that quantises per batch, like the int8
    CPU artifacts, then gives the same embeddings); up to :data:`BATCHES_PER_BLOCK` while each
    actor still gets four blocks or more."""
    batches = -(-chips // batch)
    per = max(1, min(BATCHES_PER_BLOCK, batches // (4 * actors)), -(-batches // MAX_BLOCKS))
    return per * batch


def chip_blocks(items: list[dict], size: int):
    """The rows as Arrow tables of ``size`` rows: one Ray Data block each (``from_items`` would
    split them evenly, not on batch boundaries)."""
    import pyarrow as pa

    return [pa.Table.from_pylist(items[k : k + size]) for k in range(0, len(items), size)]


def build_dataset(items: list[dict], scenes: list[Scene], engine: EngineInfo, layout: Layout, batch: int,
                  options: RunOptions, threads: int | None):  # fmt: skip
    """Rows → read (CPU tasks, or fused into the actors) → engine (actor pool)."""
    import ray
    from ray.data import ActorPoolStrategy

    engine_args = {"num_cpus": layout.cpus_per_actor}
    if layout.gpus_per_actor:
        engine_args["num_gpus"] = layout.gpus_per_actor
    meta = engine.metadata
    chip_bytes = len(meta.bands) * meta.chip_size**2 * 4
    # Apart from the actors, a read task reserves memory for the pixels it hands on (which also keeps
    # Ray from fusing it into the actors when their resources happen to be the same).
    read_args = dict(engine_args) if layout.fused else {"num_cpus": 1, "memory": 4 * chip_bytes}
    die_after = os.environ.get(DIE_AFTER_ENV)
    constructor = {"artifact": engine.artifact, "backend": engine.backend,
                   "threads": threads or (None if layout.gpus_per_actor else int(layout.cpus_per_actor)),
                   "max_nodata": options.max_nodata, "patches": options.needs_patches,
                   "die_after": int(die_after) if die_after else None, "die_marker": os.environ.get(DIE_MARKER_ENV)}  # fmt: skip
    return (
        ray.data.from_arrow(chip_blocks(items, chips_per_block(len(items), batch, layout.actors)))
        .map_batches(read_chips, fn_kwargs={"scenes": scenes}, batch_size=1, **read_args)
        .map_batches(EngineActor, fn_constructor_kwargs=constructor, compute=ActorPoolStrategy(size=layout.actors),
                     batch_size=batch, **engine_args)
    )  # fmt: skip


def run_on_ray(
    cluster: RayCluster, engine: EngineInfo, jobs: Sequence[tuple[Scene, ScenePaths]], options: RunOptions,
    progress: Progress | None = None, threads: int | None = None, layout: Layout | None = None,
    stats: dict | None = None,
) -> Iterator[SceneResult]:  # fmt: skip
    """Embed the scenes on Ray; yields each scene's result as it is published (or fails).

    A scene that cannot be read, has nothing under ``max_nodata`` or cannot be written is a result
    with its one-line reason and leaves no file under a final name; the others go on. A job that
    cannot run at all raises :class:`RayJobError`. ``stats`` (for benchmarks) receives Ray Data's
    execution statistics under ``"dataset"`` once the job is done. The output folders are locked
    while it runs, as the local pipeline's are (:mod:`clay.runtime.outputs.lock`).
    """
    check_patch_embeddings(engine.metadata, options.needs_patches, options.patch_request())
    if not jobs:
        return
    with hold_folders(paths.chips.parent for _, paths in jobs), claim_scenes(paths.chips for _, paths in jobs):
        yield from _run_on_ray(cluster, engine, jobs, options, progress, threads, layout, stats)


def _run_on_ray(cluster: RayCluster, engine: EngineInfo, jobs: Sequence[tuple[Scene, ScenePaths]], options: RunOptions,
                progress: Progress | None, threads: int | None, layout: Layout | None,
                stats: dict | None) -> Iterator[SceneResult]:  # fmt: skip
    batch = options.batch_size or engine.preferred_batch
    items, grids = chip_items(jobs, options.edge)
    layout = layout or cluster.layout(engine, threads, -(-len(items) // batch))
    scenes = [scene for scene, _ in jobs]
    states = [_Gathered(scene, paths, grid) for (scene, paths), grid in zip(jobs, grids)]
    dataset = build_dataset(items, scenes, engine, layout, batch, options, threads)
    start = time.perf_counter()
    counts = RunCounts(0, len(states), 0, len(items), 0.0)
    try:
        for rows in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            filed, finished = _gather(rows, states)
            counts.chips_done += filed
            for state in finished:
                counts.scenes_done += 1
                yield _publish(state, engine, options, start)
            counts.seconds = time.perf_counter() - start
            if progress:
                progress(counts)
    except (SceneError, RayJobError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps the cause in its own types
        raise _job_error(exc, "the Ray job stopped") from None
    if stats is not None:
        stats["dataset"] = dataset.stats()
    for state in states:
        if state.rows is not None:  # rows lost: never seen with Ray Data's retries, but never a silent gap
            counts.scenes_done += 1
            yield _result(state, engine, start, error=f"{state.scene.path}: only {len(state.rows)} of "
                                                       f"{len(state.chips)} chips came back from Ray")  # fmt: skip
    if progress:
        counts.seconds, counts.final = time.perf_counter() - start, True
        progress(counts)


def _gather(rows: dict[str, np.ndarray], states: list[_Gathered]) -> tuple[int, list[_Gathered]]:
    """File the rows under their scenes: how many chips are new, and the scenes now complete."""
    patches = rows.get("patches")
    filed, touched = 0, []
    for k in range(len(rows["scene"])):
        state, chip = states[int(rows["scene"][k])], int(rows["chip"][k])
        if state.rows is None or chip in state.rows:
            continue  # a duplicate of a retried batch: the chip is already filed (or its scene written)
        state.rows[chip] = (rows["embedding"][k], None if patches is None else patches[k], float(rows["nodata"][k]),
                            str(rows["error"][k]), bool(rows["skipped"][k]))  # fmt: skip
        filed += 1
        touched.append(state)
    return filed, [state for state in dict.fromkeys(touched) if state.complete]


def _publish(state: _Gathered, engine: EngineInfo, options: RunOptions, start: float) -> SceneResult:
    """Write a complete scene in grid order and publish it, or give the first chip's error."""
    ordered = [state.rows[k] for k in range(len(state.chips))]
    kept = [k for k, row in enumerate(ordered) if not row[3] and not row[4]]
    error = next((row[3] for row in ordered if row[3]), None)
    if error is None and not kept:
        error = nothing_to_embed(state.scene, options)
    if error is None:
        try:
            write_scene(state.scene, state.paths, engine.metadata, [state.chips[k] for k in kept],
                        [ordered[k][2] for k in kept], np.stack([ordered[k][0] for k in kept]),
                        np.stack([ordered[k][1] for k in kept]) if options.needs_patches else None, options)  # fmt: skip
        except OutputError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a footprint or row that cannot be made fails this scene only
            error = f"{state.scene.path}: cannot write its rows ({type(exc).__name__}: {first_line(exc)})"
    return _result(state, engine, start, error, done=len(kept), skipped=sum(row[4] for row in ordered))


def write_scene(scene: Scene, paths: ScenePaths, metadata: EngineMetadata, chips: list[Chip], fractions: list[float],
                embeddings: np.ndarray, patch_means: np.ndarray | None, options: RunOptions) -> None:  # fmt: skip
    """A whole scene's rows through the local pipeline's writers, published all or nothing."""
    source, extra = scene_identity(scene, metadata)
    output = open_output(paths, scene, source, extra, embeddings.shape[1], options)
    try:
        write_chip_rows(output, scene, source, chips, fractions, embeddings, patch_means)
        output.commit()
    except BaseException:
        output.abort()
        raise


def _result(state: _Gathered, engine: EngineInfo, start: float, error: str | None = None, done: int = 0,
            skipped: int = 0) -> SceneResult:  # fmt: skip
    state.rows = None  # the embeddings are written (or dropped): free them, and ignore late duplicates
    return SceneResult(state.scene.path, state.scene.name, None if error else state.paths, 0 if error else done,
                       skipped, time.perf_counter() - start, engine.backend, error, state.scene)  # fmt: skip


def _job_error(exc: BaseException, context: str) -> Exception:
    """Ray's error as one line: the runtime's own error where a task raised one (Ray wraps it in a
    ``RayTaskError`` whose text is the remote traceback), else the root cause."""
    cause = exc
    for _ in range(10):  # RayTaskError.cause is the exception the task raised
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    if isinstance(cause, (SceneError, EngineError, OutputError)):
        return type(cause)(first_line(cause))
    return RayJobError(f"{context} ({type(cause).__name__}: {first_line(cause)})")
