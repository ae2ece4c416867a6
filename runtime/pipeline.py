"""Scenes → chips → engine → GeoParquet, every stage overlapped, several scenes in flight.

The chips of all scenes form one stream in scene and grid order. Scenes are opened (validated:
headers, units, dates, see :func:`clay.runtime.scenes.scene.open_scene`) by their own threads a few scenes
ahead of the stream, so an archive of chip-sized scenes does not pay each scene's opening on the
critical path. Reader threads read chips ahead of the engine straight into a ring of reused host
buffers (pinned where the engine copies to a GPU), so that a batch is a slice of the ring (no
per-batch allocation, no copy) and batches are full across scene boundaries: the engine never
waits for a scene to open or to finish. The main thread stages the next batch (a GPU backend copies
it in) while the engine's thread runs the current one, then writes each chip's outputs to its own
scene's files, in grid order, and publishes a scene when its last chip is written.

Whatever goes wrong inside one scene (a scene that cannot be opened, a read, a footprint, a write)
fails that scene with one line; with ``keep_going`` the others finish.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .engines.base import Engine
from .errors import SceneError, first_line
from .metadata import EngineMetadata
from .options import RunOptions, check_patch_embeddings
from .outputs.geoparquet import SceneOutput, file_metadata, row_columns, scene_grid, warm_up
from .outputs.overlap import GroundClaims
from .outputs.patch_grid import CellGrid
from .outputs.patch_raster import PatchRasterWriter
from .outputs.publish import OutputError, ScenePaths
from .outputs.stac_records import provenance_metadata
from .scenes.geometry import patch_polygons
from .scenes.grid import Chip, patch_cells
from .scenes.inputs import SceneFiles
from .scenes.reader import gdal_env, read_chip
from .scenes.scene import Scene, open_scene
from .timing import StageClock

Progress = Callable[[str, int], None]  # (scene name, chips passed) after every batch


class ChipReaders:
    """The chip-reader threads: GDAL configured once in each, files kept open between chips."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="clay-reader", initializer=_enter_gdal_env)

    def submit(self, scene: Scene, chip: Chip, out: np.ndarray, clock: StageClock) -> Future:
        return self._pool.submit(_read_into, scene, chip, out, clock)

    def close(self) -> None:
        """Stop the threads; their open files close with them (each thread's handles are its own)."""
        self._pool.shutdown(wait=True)


_thread_env = threading.local()


def _enter_gdal_env() -> None:
    _thread_env.env = gdal_env()
    _thread_env.env.__enter__()


def _read_into(scene: Scene, chip: Chip, out: np.ndarray, clock: StageClock) -> tuple[float, tuple[float, float]]:
    start = time.perf_counter()
    try:
        _, fraction = read_chip(scene, chip, out)
        centre = scene.chip_centre(chip)
    except SceneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is this scene's, in one line
        raise SceneError(f"{scene.path}: chip at row {chip.row}, col {chip.col}: {type(exc).__name__}: "
                         f"{first_line(exc)}") from None  # fmt: skip
    clock.add("read", time.perf_counter() - start)
    return fraction, centre


@dataclass
class SceneJob:
    """One scene to embed and the files it goes to: an opened :class:`Scene`, or the
    :class:`SceneFiles` the pipeline opens itself, ahead of the chip stream."""

    scene: Scene | SceneFiles
    paths: ScenePaths

    @property
    def name(self) -> str:
        return self.scene.name

    @property
    def path(self) -> Path:
        return self.scene.path


@dataclass
class SceneResult:
    """How one scene ended: its files, or the one-line reason it failed."""

    scene: Path
    name: str
    paths: ScenePaths | None
    chips_done: int
    chips_skipped: int
    seconds: float
    backend: str
    error: str | None = None
    opened: Scene | None = None  # what open_scene made of it (None: it could not be opened)

    @property
    def output(self) -> Path | None:
        return self.paths.chips if self.paths else None

    @property
    def patches(self) -> Path | None:
        return self.paths.patches if self.paths else None

    @property
    def raster(self) -> Path | None:
        return self.paths.raster if self.paths else None

    @property
    def chips_per_second(self) -> float:
        return self.chips_done / self.seconds if self.seconds else 0.0


@dataclass(eq=False)  # identity: a scene's state is a dict key
class _SceneState:
    job: SceneJob
    scene: Scene | None  # None: it could not be opened (``error`` says why)
    chips: list[Chip]
    extra: dict[str, str]
    source: str
    output: SceneOutput | None = None
    settled: int = 0  # chips written, skipped or dropped
    done: int = 0
    skipped: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> bool:
        return self.settled == len(self.chips)


@dataclass
class _Slot:
    state: _SceneState
    chip: Chip
    read: Future | None  # None: the scene already failed, the chip is not read


def run_scenes(
    engine: Engine,
    jobs: Sequence[SceneJob],
    options: RunOptions,
    readers: ChipReaders,
    progress: Progress | None = None,
    clock: StageClock | None = None,
    on_open: Callable[[Scene], None] | None = None,
) -> Iterator[SceneResult]:
    """Embed every job's scene; yields each scene's result as it finishes, in order.

    Jobs given as :class:`SceneFiles` are opened ahead of the chip stream (``on_open`` is called
    with each opened scene, on the opening thread). A scene that fails (it cannot be opened, a read
    error, every chip above ``max_nodata``, an output that cannot be written) leaves no file under a
    final name; with ``options.keep_going`` its result carries the reason and the other scenes go
    on, otherwise the :class:`SceneError` is raised.
    """
    meta = engine.metadata
    check_patch_embeddings(meta, options.needs_patches, options.patch_request())
    clock = clock or StageClock()
    batch = options.batch_size or engine.preferred_batch
    # Chip n of the stream is read into ring[n % len(ring)]; a batch is a contiguous slice of it.
    # Room for the two batches the engine holds (one running, one staged) and for reading ahead.
    ring_chips = 2 * batch + -(-max(readers.count, batch) // batch) * batch
    ring = engine.host_buffer((ring_chips, len(meta.bands), meta.chip_size, meta.chip_size))
    # Scenes are opened far enough ahead to fill the ring with chip-sized scenes.
    opener = ThreadPoolExecutor(max(1, readers.count // 2), thread_name_prefix="clay-open")
    states: list[_SceneState] = []
    stream = _chip_stream(jobs, states, meta, options, opener, ring_chips + readers.count, clock, on_open)
    slots: deque[_Slot] = deque()
    in_flight: deque[tuple[list[_Slot], list, Future | None]] = deque()
    submitted = released = finished = 0

    def refill() -> None:
        """Read ahead into every ring slot the engine is done with."""
        nonlocal submitted
        while submitted < released + ring_chips:
            item = next(stream, None)
            if item is None:
                return
            state, chip = item
            read = None if state.error else readers.submit(state.scene, chip, ring[submitted % ring_chips], clock)
            slots.append(_Slot(state, chip, read))
            submitted += 1

    def publish_finished() -> None:
        """Hand every finished scene, in order, to the writer's thread to publish."""
        nonlocal finished
        while finished < len(states) and states[finished].finished:
            results.append(writer_thread.submit(_finish, states[finished], engine, options))
            finished += 1

    # The engine's thread runs batches; the writer's thread writes rows and publishes scenes (an
    # fsync per file) in submission order, so neither holds up the assembly of the next batch. It
    # writes the patch rasters with GDAL, configured as in the readers.
    engine_thread = ThreadPoolExecutor(1, thread_name_prefix="clay-engine")
    writer_thread = ThreadPoolExecutor(1, thread_name_prefix="clay-writer", initializer=_enter_gdal_env)
    writes: deque[Future] = deque()
    results: deque[Future] = deque()
    warm_up()
    try:
        refill()
        while slots or in_flight:
            while slots and len(in_flight) < 2:  # assemble and stage the next batch while the engine runs
                base = (submitted - len(slots)) % ring_chips
                group = [slots.popleft() for _ in range(min(batch, len(slots)))]
                kept = _gather(group, base, options, clock)
                in_flight.append((group, kept, _submit(engine, engine_thread, ring, kept, clock) if kept else None))
            group, kept, running = in_flight.popleft()
            outputs = running.result() if running is not None else None
            released += len(group)  # the engine is done with these ring slots
            refill()
            if outputs is not None:
                writes.append(writer_thread.submit(_write, kept, outputs, options, clock))
            for slot in group:
                slot.state.settled += 1
            publish_finished()
            if progress:
                for state in dict.fromkeys(slot.state for slot in group):
                    progress(state.job.name, sum(slot.state is state for slot in group))
            while writes and writes[0].done():
                writes.popleft().result()  # a write error stops the run here unless keep_going
            while results and results[0].done():
                yield results.popleft().result()
        publish_finished()  # scenes that could not be opened after the last chip
        for write in writes:
            write.result()
        for result in results:
            yield result.result()
    except BaseException:
        for slot in slots:
            if slot.read is not None:
                slot.read.cancel()
        writer_thread.shutdown(wait=True, cancel_futures=True)
        for state in states:
            if state.output is not None:
                state.output.abort()
                state.output = None
        raise
    finally:
        opener.shutdown(wait=True, cancel_futures=True)
        engine_thread.shutdown(wait=True, cancel_futures=True)
        writer_thread.shutdown(wait=True)


def _chip_stream(jobs: Sequence[SceneJob], states: list, meta: EngineMetadata, options: RunOptions,
                 opener: ThreadPoolExecutor, ahead: int, clock: StageClock,
                 on_open: Callable[[Scene], None] | None) -> Iterator[tuple[_SceneState, Chip]]:  # fmt: skip
    """The chips of every scene in order, each scene opened up to ``ahead`` scenes before its first
    chip is needed; appends each scene's state to ``states`` as the stream reaches it. A scene that
    cannot be opened gets a state with no chips and its reason (raised unless ``keep_going``)."""

    def open_one(files: SceneFiles) -> Scene:
        start = time.perf_counter()
        try:
            scene = open_scene(files, meta, options)
        finally:
            clock.add("open scenes", time.perf_counter() - start)
        if on_open is not None:
            on_open(scene)
        return scene

    pending: deque[tuple[SceneJob, Future | None]] = deque()
    upcoming = iter(jobs)

    def submit_next() -> None:
        job = next(upcoming, None)
        if job is not None:
            pending.append((job, opener.submit(open_one, job.scene) if isinstance(job.scene, SceneFiles) else None))

    for _ in range(ahead):
        submit_next()
    while pending:
        job, opening = pending.popleft()
        submit_next()
        scene, error = job.scene, None
        if opening is not None:
            start = time.perf_counter()
            try:
                scene = opening.result()
            except SceneError as exc:
                scene, error = None, str(exc)
            finally:
                clock.add("wait for scene opening", time.perf_counter() - start)
        if scene is None:
            state = _SceneState(job, None, [], {}, "", error=error)
        else:
            source, extra = scene_identity(scene, meta)
            state = _SceneState(job, scene, scene.chips(options.edge), extra, source)
        states.append(state)
        if error and not options.keep_going:
            raise SceneError(error)
        for chip in state.chips:
            yield state, chip


def _gather(group: list[_Slot], base: int, options: RunOptions, clock: StageClock) -> list:
    """Wait for a batch's reads; the chips to embed as (ring position, slot, nodata fraction, centre)."""
    kept = []
    for index, slot in enumerate(group):
        result = _wait(slot, clock)
        if isinstance(result, SceneError):
            _fail(slot.state, str(result), options)
        elif result is not None and not slot.state.error:
            fraction, centre = result
            if fraction > options.max_nodata:
                slot.state.skipped += 1
            else:
                kept.append((base + index, slot, fraction, centre))
    return kept


def _submit(engine: Engine, worker: ThreadPoolExecutor, ring: np.ndarray, kept: list, clock: StageClock) -> Future:
    """Stage the kept chips (a view of the ring when none was dropped) and hand them to the engine's thread."""
    positions = [position for position, *_ in kept]
    pixels = ring[positions[0] : positions[-1] + 1]
    if len(pixels) != len(positions):
        pixels = ring[positions]  # chips dropped from the middle: gather the rest (a copy, rare)
    lonlat = np.array([centre for *_, centre in kept], np.float32)
    date = np.array([[d.year, d.month, d.day] for d in (slot.state.scene.date for _, slot, _, _ in kept)], np.float32)
    staged = engine.stage(pixels, lonlat, date, clock)
    return worker.submit(engine.run, staged, clock)


def _write(kept: list, outputs: dict[str, np.ndarray], options: RunOptions, clock: StageClock) -> None:
    """Each chip's outputs to its own scene's files (a scene that failed meanwhile is dropped)."""
    with clock.timed("write"):
        for state in dict.fromkeys(slot.state for _, slot, _, _ in kept):
            if state.error:
                _drop_output(state)
                continue
            rows = [k for k, (_, slot, _, _) in enumerate(kept) if slot.state is state]
            try:
                _write_rows(state, [kept[k] for k in rows], {name: value[rows] for name, value in outputs.items()}, options,
                            clock)  # fmt: skip
            except OutputError as exc:
                _drop_output(state)
                _fail(state, str(exc), options)
            except Exception as exc:  # noqa: BLE001 - a footprint or row that cannot be made fails this scene only
                _drop_output(state)
                _fail(state, f"{state.job.path}: cannot write its rows ({type(exc).__name__}: {first_line(exc)})", options)


def _wait(slot: _Slot, clock: StageClock):
    """The chip's (nodata fraction, centre), its scene's read error, or ``None`` (not read)."""
    if slot.read is None:
        return None
    start = time.perf_counter()
    try:
        return slot.read.result()
    except SceneError as exc:
        return exc
    finally:
        clock.add("wait for reads", time.perf_counter() - start)


def _fail(state: _SceneState, message: str, options: RunOptions) -> None:
    """Mark the scene failed (the writer's thread drops its files); the run stops unless ``keep_going``."""
    if not state.error:
        state.error = message
    if not options.keep_going:
        raise SceneError(message)


def _drop_output(state: _SceneState) -> None:
    """Abort a failed scene's files (on the writer's thread, the only one that touches them)."""
    if state.output is not None:
        state.output.abort()
        state.output = None


def _write_rows(state: _SceneState, kept: list, outputs: dict[str, np.ndarray], options: RunOptions,
                clock: StageClock) -> None:  # fmt: skip
    if state.output is None:
        state.output = open_output(state.job.paths, state.scene, state.source, state.extra,
                                   outputs["embedding"].shape[1], options, clock)  # fmt: skip
    chips = [slot.chip for _, slot, _, _ in kept]
    patches = group_means(outputs["patch_embeddings"]) if state.output.needs_patch_means else None
    write_chip_rows(state.output, state.scene, state.source, chips, [fraction for _, _, fraction, _ in kept],
                    outputs["embedding"], patches)  # fmt: skip
    state.done += len(chips)


def scene_identity(scene: Scene, metadata: EngineMetadata) -> tuple[str, dict[str, str]]:
    """What every file of a scene carries, whichever way it was run: its ``source_url`` and the
    key-value metadata (engine, scene CRS, preprocessing, the scene's grid, and the provenance its STAC Item
    carries: :func:`clay.runtime.outputs.stac_records.provenance_metadata`)."""
    source = scene.source_url or str(scene.path.resolve())  # a STAC Item's self link, else the file or folder
    grid = scene_grid(scene.transform, scene.width, scene.height)
    extra = file_metadata(metadata, scene.crs.to_string(), scene.applied, grid)
    return source, {**extra, **provenance_metadata(metadata, source, scene.applied)}


def open_output(paths: ScenePaths, scene: Scene, source: str, extra: dict[str, str], dim: int, options: RunOptions,
                clock: StageClock | None = None) -> SceneOutput:  # fmt: skip
    """A scene's writers (its GeoParquet files and, when ``paths.raster`` is set, its patch raster
    of ``options.raster_dtype``), for the local pipeline and the Ray job alike. The raster's tags
    carry the GeoParquet files' key-value metadata, the source and the date."""
    claims = GroundClaims(CellGrid.of(scene.transform, scene.width, scene.height, scene.patch_size),
                          scene.chips(options.edge), scene.chip_size)  # fmt: skip
    raster = None
    if paths.raster is not None:
        tags = {**extra, "clay:source_url": source, "clay:date": scene.date.isoformat()}
        raster = PatchRasterWriter(paths.raster, scene, dim, options.raster_dtype, tags, claims, clock)
    try:
        return SceneOutput(paths, dim, extra, claims, scene.multipart, raster)
    except BaseException:
        if raster is not None:
            raster.abort()
        raise


def group_means(patch_embeddings: np.ndarray) -> np.ndarray:
    """``[B, G, 16, 16, dim]`` → ``[B, 16, 16, dim]``: a patch's row is the mean of its band-group
    tokens. Taken where the engine ran, so the Ray job moves a G-th of the bytes (same values as
    averaging chip by chip)."""
    return patch_embeddings.mean(axis=1)


def write_chip_rows(output: SceneOutput, scene: Scene, source: str, chips: list[Chip], fractions: list[float],
                    embeddings: np.ndarray, patch_means: np.ndarray | None = None) -> None:  # fmt: skip
    """Chips of one scene, in the order given, as rows of its chip file, and their patches as rows
    of its patch file and cells of its patch raster when it has them (``patch_means`` from
    :func:`group_means`). The one place rows are made, for the local pipeline and the Ray job alike,
    so both write the same files. ``chips`` must come in grid order, every kept chip once: their
    cells are claimed by the patch raster's rule (:mod:`clay.runtime.outputs.overlap`), and a chip's
    rows wait for the scene's commit while a later chip could still take one of its cells."""
    claimed = [output.claims.claim(chip) for chip in chips]
    if output.raster is not None:
        output.raster.write(claimed, patch_means)
    settled = [output.claims.settled(chip) for chip in chips]
    for now in (True, False):
        picked = [k for k, done in enumerate(settled) if done == now]
        if picked:
            write = partial(_write_settled_rows, output, scene, source, [chips[k] for k in picked],
                            [fractions[k] for k in picked], embeddings[picked],
                            None if patch_means is None else patch_means[picked])  # fmt: skip
            if now:
                write()
            else:
                output.defer(write)


def _write_settled_rows(output: SceneOutput, scene: Scene, source: str, chips: list[Chip], fractions: list[float],
                        embeddings: np.ndarray, patch_means: np.ndarray | None) -> None:  # fmt: skip
    """The rows of chips whose cells no later chip can take (their overlap columns are final)."""
    covered = np.array([output.claims.chip_overlap(c) for c in chips], np.float32)
    output.chips.write(row_columns(
        source, scene.date, embeddings, [scene.chip_polygon(c) for c in chips], scene.multipart, scene.item_id,
        output.model, output.sensor, row=[c.row for c in chips], col=[c.col for c in chips], nodata_fraction=fractions,
        overlap=covered > 0, overlap_fraction=covered,
    ))  # fmt: skip
    if output.patches is not None:
        for chip, grid in zip(chips, patch_means):
            cells = patch_cells(chip, scene.chip_size, scene.patch_size)
            i, j = [c.i for c in cells], [c.j for c in cells]
            output.patches.write(row_columns(
                source, scene.date, grid[i, j], patch_polygons(scene.transform, scene.crs, chip, cells, scene.patch_size),
                scene.multipart, scene.item_id, output.model, output.sensor, row=[c.row for c in cells], col=[c.col for c in cells],
                chip_row=[chip.row] * len(cells), chip_col=[chip.col] * len(cells),
                overlap=output.claims.patch_overlap(chip, i, j),
            ))  # fmt: skip


def _finish(state: _SceneState, engine: Engine, options: RunOptions) -> SceneResult:
    """Publish the scene's files (on the writer's thread, after its last rows), or drop them."""
    if not state.error and state.done == 0:
        state.error = nothing_to_embed(state.scene, options)
    if not state.error:
        try:
            state.output.commit()
            state.output = None
        except OutputError as exc:
            state.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a held-back row (SceneOutput.defer) that cannot be made fails this scene only
            state.error = f"{state.job.path}: cannot write its rows ({type(exc).__name__}: {first_line(exc)})"
    _drop_output(state)
    job = state.job
    result = SceneResult(job.path, job.name, None if state.error else job.paths, state.done, state.skipped,
                         time.perf_counter() - state.started, engine.backend, state.error, state.scene)  # fmt: skip
    if state.error and not options.keep_going:
        raise SceneError(state.error)
    return result


def nothing_to_embed(scene: Scene, options: RunOptions) -> str:
    """Why a scene whose every chip was skipped fails: a scene file with no row would look done."""
    return f"{scene.path}: every chip has more than {options.max_nodata:.0%} nodata; nothing to embed"
