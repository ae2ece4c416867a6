"""Python API for services that embed the runtime: load an engine once, embed arrays or scenes.

    from clay.runtime import ClayEmbedder, RunOptions
    with ClayEmbedder("engine/") as embedder:                 # an export folder or one artifact
        vectors = embedder.embed(pixels, lonlat, dates)       # [B, dim] float32
        table = embedder.embed_scene("scene.tif")             # pyarrow Table, one row per chip
        table = embedder.embed_scene(item)                    # a STAC Item: pystac.Item, or its .json
        for result in embedder.embed_scenes(paths, "out/", RunOptions(keep_going=True)):
            ...

Everything ``clay-run`` does goes through this class, with the same :class:`RunOptions`.
``ClayEmbedder`` is thread-safe: engine calls are serialised, and the chip-reader threads (GDAL
configured once in each) are shared by every call.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .demo import resolve_engine
from .engines.base import Engine, EngineError, all_finite
from .engines.choice import SCENE_SENSOR, open_engine, sensor_artifacts, sensor_keys
from .errors import SceneError
from .metadata import EngineMetadata
from .options import RunOptions, check_patch_embeddings
from .outputs.lock import claim_scenes, hold_folders
from .outputs.publish import OutputError, ScenePaths
from .pipeline import ChipReaders, Progress, SceneJob, SceneResult, run_scenes
from .scenes.inputs import SceneFiles
from .scenes.scene import Scene, as_scene_files, open_scene
from .scenes.sensing import choose_artifact
from .sensors import SENSORS
from .timing import StageClock


def prepare_output_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and its missing parents) and check that files can be written in it, before
    any pixel is read. Returns the folders this call created, outermost first, so that a run that
    then fails before writing anything can remove them (:func:`remove_if_empty`). Raises
    :class:`OutputError` naming the folder."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: --out names an existing file; give a directory (new or existing)")
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a name of its own: two runs probing one folder under one name could remove each other's probe
        fd, probe = tempfile.mkstemp(prefix=".clay-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_if_empty(missing)
        raise OutputError(f"{folder}: output directory is not writable ({exc.strerror or exc})") from None
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders given (outermost first) that hold nothing, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or already gone): kept


#: What :meth:`ClayEmbedder.embed_scene` takes as a scene besides paths: a GeoTIFF's bytes (an
#: upload, an object fetched by your own client) or a rasterio dataset you opened (``MemoryFile``
#: included). Both are read through GDAL's in-memory file system (``/vsimem/``).
InMemoryScene = bytes | bytearray | memoryview


@contextmanager
def scene_source(scene, name: str | None = None) -> Iterator:
    """``scene`` as the runtime opens it: bytes become a ``/vsimem/`` GeoTIFF for the duration of the
    block (named ``name`` where given, e.g. the product's file name, from which a date can be read);
    an open rasterio dataset is read by its name (its ``/vsimem/`` path for a ``MemoryFile``);
    anything else is passed on as it is."""
    if name is not None and not isinstance(scene, (bytes, bytearray, memoryview)):
        raise ValueError("name= gives bytes the file name they had; a path or a dataset has its own (for a "
                         "rasterio.MemoryFile: MemoryFile(data, filename=...))")  # fmt: skip
    if isinstance(scene, (bytes, bytearray, memoryview)):
        from rasterio.io import MemoryFile

        with MemoryFile(bytes(scene), filename=Path(name).name if name else None) as memory:
            yield memory.name
        return
    from rasterio.io import DatasetReaderBase, DatasetWriterBase

    if isinstance(scene, (DatasetReaderBase, DatasetWriterBase)):
        if scene.closed:
            raise SceneError(f"{scene.name}: the dataset is closed; give it open, or its path")
        yield scene.name
        return
    yield scene


class ClayEmbedder:
    """A loaded Clay engine, the chip readers and the scene pipeline around it.

    ``engine_path``: an engine file or export folder, or ``"demo"`` for the bundled demo engine
    (where no file or folder of that name exists); or an :class:`Engine` already open (a service
    that also runs it on chips: ``clay-serve``), which stays the caller's to close (``backend``
    and ``threads`` are then not used). A Clay v1.5 export folder of several sensors
    (``clay-export --sensor a,b,...``) serves them all: each scene is embedded by the artifact of its
    sensor and bands (:mod:`clay.runtime.scenes.sensing`; ``options.sensor`` names the sensor of
    every scene), opened when a scene first needs it; :attr:`engine` and :meth:`embed` are the
    artifact of ``options.sensor``, else Sentinel-2 L2A's, else the folder's only one."""

    def __init__(self, engine_path: str | Path | Engine, backend: str = "auto", threads: int | None = None,
                 options: RunOptions | None = None) -> None:  # fmt: skip
        self.options = options or RunOptions()
        self._owns_engine = not isinstance(engine_path, Engine)
        path = resolve_engine(engine_path) if self._owns_engine else engine_path.path
        self._folder, self._backend, self._threads = Path(path), backend, threads
        self.sensors = sensor_artifacts(self._folder, backend) if self._owns_engine and Path(path).is_dir() else {}
        self._engines: dict[str, Engine] = {}
        if not self._owns_engine:
            self.engine: Engine = engine_path
            # an artifact of a Clay v1.5 folder of sensors (clay-serve --engine FOLDER): the folder's
            # other sensors are embedded by their own artifacts, opened when a scene needs them
            key, folder = Path(engine_path.path).parent.name, Path(engine_path.path).parent.parent
            if key in sensor_keys(folder):
                self._folder, self.sensors = folder, sensor_artifacts(folder, backend)
                self._engines[key] = engine_path
        elif self.sensors:
            default = next((k for k in (self.options.sensor, SCENE_SENSOR) if k in self.sensors), sorted(self.sensors)[0])
            self.engine = open_engine(self._folder / default, backend, threads)
            self._engines[default] = self.engine
        else:
            self.engine = open_engine(path, backend, threads)
            if self.options.sensor is not None and self.engine.metadata.model != "clay-v1.5":
                self.engine.close()
                raise EngineError(f"{path}: sensor {self.options.sensor} (--sensor) names a Clay v1.5 sensor; this is a "
                                  f"{self.engine.metadata.model} engine")  # fmt: skip
        self.clock = StageClock()
        self._readers: ChipReaders | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> list[Engine]:
        """The engines opened so far: :attr:`engine`, and with a Clay v1.5 folder of sensors the
        artifacts scenes have needed since (in the order opened)."""
        return list({id(e): e for e in (self.engine, *self._engines.values())}.values())

    def engine_for(self, key: str) -> Engine:
        """The engine of one artifact set of a Clay v1.5 folder of sensors (opened once)."""
        with self._lock:
            if key not in self._engines:
                self._engines[key] = open_engine(self._folder / key, self._backend, self._threads)
            return self._engines[key]

    def _choose(self, files: SceneFiles, options: RunOptions) -> tuple[str, SceneFiles]:
        """The artifact set (key) that embeds a scene, and the scene with how its sensor was told."""
        choice = choose_artifact(files, self.sensors, options.sensor)
        return choice.key, replace(files, sensor_note=choice.told_by)

    def __enter__(self) -> ClayEmbedder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the reader threads and free the engine (unless it was given open)."""
        with self._lock:
            if self._readers is not None:
                self._readers.close()
                self._readers = None
        for engine in {id(e): e for e in (self.engine, *self._engines.values())}.values():
            if self._owns_engine or engine is not self.engine:
                engine.close()

    @property
    def metadata(self) -> EngineMetadata:
        return self.engine.metadata

    @property
    def readers(self) -> ChipReaders:
        with self._lock:
            if self._readers is None:
                self._readers = ChipReaders(self.options.reader_count)
            return self._readers

    def embed(
        self, pixels: np.ndarray, lonlat: np.ndarray, dates: np.ndarray, patch_embeddings: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed in-memory chips.

        ``pixels [B, C, S, S]``: raw values of the engine's bands (``metadata.bands``, spec order),
        S = ``metadata.chip_size`` (Clay v0: 512; Clay v1.5: 256 unless exported otherwise);
        ``lonlat [B, 2]``: chip centres in degrees; ``dates [B, 3]``: year, month, day.
        Returns ``[B, dim]`` float32, plus ``[B, G, S/p, S/p, dim]`` with ``patch_embeddings``
        (v0: G groups, p = 32; v1.5: G = 1, p = 8).
        """
        meta = self.metadata
        pixels = np.asarray(pixels)
        expected = (len(meta.bands), meta.chip_size, meta.chip_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"pixels must be [B, {', '.join(map(str, expected))}] ({', '.join(meta.bands)}), got {list(pixels.shape)}")
        if not all_finite(pixels):
            raise ValueError("pixels hold NaN or infinite values; fill nodata before embedding")
        check_patch_embeddings(meta, patch_embeddings)
        outputs = self.engine.infer(pixels, np.asarray(lonlat), np.asarray(dates))
        if patch_embeddings:
            return outputs["embedding"], outputs["patch_embeddings"]
        return outputs["embedding"]

    def open_scene(self, scene: str | Path | SceneFiles, options: RunOptions | None = None) -> Scene:
        """Validate a scene against the engine (bands, grid, units, date) without reading a chip. A
        scene is a path or URI as ``clay-run`` takes it (a GeoTIFF, a folder, a STAC Item's .json),
        :class:`SceneFiles`, or a ``pystac.Item`` (several Items as one scene:
        :func:`clay.runtime.scenes.stac.scene_from_items`). With a Clay v1.5 folder of sensors, against
        the artifact of the scene's sensor and bands."""
        options = options or self.options
        if not self.sensors:
            return open_scene(scene, self.metadata, options)
        key, files = self._choose(as_scene_files(scene, options.http_timeout), options)
        return open_scene(files, self.engine_for(key).metadata, options)

    def embed_scenes(
        self, scenes: Iterable[SceneJob | tuple[Scene | SceneFiles | str | Path, ScenePaths]],
        options: RunOptions | None = None, progress: Progress | None = None,
        on_open: Callable[[Scene], None] | None = None,
    ) -> Iterator[SceneResult]:  # fmt: skip
        """Embed scenes into their files, several in flight; yields each result in order. A scene
        given unopened (files, a path) is opened by the pipeline ahead of its chips (``on_open`` sees
        each), and one that cannot be opened is a failed result with ``keep_going``, else raises
        :class:`SceneError`. With ``resume``, scenes whose files are complete are left out, and what
        a killed run left under ``.partial`` names is removed.

        The output folders are locked from the first result asked for to the last
        (:mod:`clay.runtime.outputs.lock`): another process writing into one of them, or another
        call of this process writing one of these scenes, is an :class:`OutputError` naming it."""
        options = options or self.options
        check_patch_embeddings(self.metadata, options.needs_patches, options.patch_request())
        given = [item if isinstance(item, SceneJob) else SceneJob(
                 item[0] if isinstance(item[0], (Scene, SceneFiles)) else as_scene_files(item[0], options.http_timeout), item[1])
                 for item in scenes]  # fmt: skip
        with hold_folders(job.paths.chips.parent for job in given), claim_scenes(job.paths.chips for job in given):
            jobs = [job for job in given if not (options.resume and job.paths.complete())]
            for job in jobs:
                job.paths.clear_partials()
            if not self.sensors:
                yield from run_scenes(self.engine, jobs, options, self.readers, progress, self.clock, on_open)
                return
            groups: dict[str, list[SceneJob]] = {}
            for job in jobs:
                try:
                    key, scene = self._job_key(job, options)
                except SceneError as exc:
                    if not options.keep_going:
                        raise
                    yield SceneResult(job.path, job.name, None, 0, 0, 0.0, self.engine.backend, str(exc))
                    continue
                groups.setdefault(key, []).append(SceneJob(scene, job.paths))
            for key, group in groups.items():  # one pipeline per artifact set, scenes in their order within it
                yield from run_scenes(self.engine_for(key), group, options, self.readers, progress, self.clock, on_open)

    def _job_key(self, job: SceneJob, options: RunOptions) -> tuple[str, Scene | SceneFiles]:
        """The artifact set a job's scene goes to: chosen for its files, or that of an opened scene."""
        if isinstance(job.scene, Scene):
            sensor = job.scene.applied.get("sensor", {}).get("name")
            if sensor is None:
                raise SceneError(f"{job.path}: opened for a Clay v0 engine; give its files to this Clay v1.5 engine folder")
            return SENSORS[sensor].subset(job.scene.bands).key, job.scene
        return self._choose(job.scene, options)

    def embed_scene_to(self, scene: str | Path | SceneFiles | InMemoryScene, output: str | Path,
                       options: RunOptions | None = None, name: str | None = None) -> SceneResult:  # fmt: skip
        """Embed a GeoTIFF scene into a GeoParquet file (and its patch file and patch raster when
        ``options`` ask for them: ``<stem>.patches.parquet``, ``<stem>.patches.tif``), published atomically.
        A scene in memory (bytes, an open rasterio dataset) is read through ``/vsimem/``
        (:func:`scene_source`; ``name``: the file name bytes had, for their date and ``source_url``).

        The output's folder is created (and checked writable) before the scene is opened; if the
        scene then fails, the folders this call created are removed again when empty. Raises
        :class:`SceneError` (the scene, or options the engine cannot serve) or :class:`OutputError`.
        """
        options = options or self.options
        output = Path(output)
        check_patch_embeddings(self.metadata, options.needs_patches, options.patch_request())
        created = prepare_output_folder(output.parent)
        try:
            paths = ScenePaths.for_chip_file(output, options.patch_embeddings, options.patch_raster)
            with scene_source(scene, name) as source:
                (result,) = self.embed_scenes([(self.open_scene(source, options), paths)], options)
            if result.error:  # with keep_going, a failed scene is a result; a single scene raises
                raise SceneError(result.error)
        except BaseException:
            remove_if_empty(created)
            raise
        return result

    def embed_scene(self, scene: str | Path | SceneFiles | InMemoryScene, options: RunOptions | None = None,
                    name: str | None = None) -> pa.Table:  # fmt: skip
        """Embed a GeoTIFF scene and return the chip table (same schema as the GeoParquet file). The
        scene may be in memory: a GeoTIFF's bytes (``name``: the file name they had) or an open
        rasterio dataset (see :meth:`embed_scene_to`)."""
        with tempfile.TemporaryDirectory(prefix="clay-") as tmp:
            result = self.embed_scene_to(scene, Path(tmp) / "chips.parquet", options, name)
            return pq.read_table(result.output)
