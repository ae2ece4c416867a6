"""GeoParquet output: conformant GeoParquet 1.1, streamed in bounded memory, published durably.

Rows follow the published Clay embeddings schema (``source_url``, ``date``, ``embeddings``,
``geometry`` in OGC:CRS84) plus ``item_id`` (the STAC Item the scene came from; null for files),
``model`` and ``sensor`` (the Clay that made the row, ``clay-v0`` or ``clay-v1.5``, and for v1.5 the
sensor whose artifact embedded the scene; null for v0: the file metadata's ``clay:model`` and
``clay:sensor`` say the same, so that a directory mixing runs cannot be read as one kind),
``row``, ``col`` and ``nodata_fraction`` (chips) or ``chip_row``,
``chip_col`` (patches), ``overlap`` (both; chips also ``overlap_fraction``: whether, and how much of,
the row's ground another kept row holds by the patch raster's one-patch-per-cell rule, so that
``WHERE NOT overlap`` takes each piece of ground once; see :mod:`clay.runtime.outputs.overlap`), and a ``bbox`` covering column (xmin, ymin, xmax, ymax) declared in the
GeoParquet metadata, whose row-group statistics let readers skip what a query does not touch. A
bbox never has xmin > xmax (a row cut at ±180° spans −180…180), so no reader's filter misses a row.

What a finished file guarantees: it was written under ``<name>.partial``, flushed and fsync'ed,
renamed, and its directory fsync'ed, so a file under its final name is complete and survives a
power loss. A scene's patch raster (:mod:`clay.runtime.outputs.patch_raster`) and patch file are published
before its chip file, and the chip file is the scene's done-marker: a scene counts as done only
when its chip file exists (and its patch file and raster, when asked for); if publishing a later
file fails, the ones published before it are withdrawn.
"""

from __future__ import annotations

import json
from datetime import date as Date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from ..metadata import EngineMetadata
from ..scenes.geometry import bounding_boxes
from .overlap import GroundClaims
from .publish import ScenePaths, fsync, naming, partial_path, publish

GEOPARQUET_VERSION = "1.1.0"
#: A row group holds a scene's chips (or up to this many rows, or this many bytes of embeddings,
#: whichever comes first): large enough for readers' statistics, bounded in memory.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 128 << 20
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
BBOX_TYPE = pa.struct([(name, pa.float64()) for name in BBOX_FIELDS])
#: The overlap columns' descriptions, in each field's metadata (``description``) for readers.
OVERLAP_DESCRIPTION = {
    "chips": "True when another kept chip's patches hold some of this chip's 32 px cells (the patch raster's "
             "rule: each cell to the nearest kept patch containing its centre, ties to the first in grid order); "
             "False for every chip on the chip-size grid. WHERE NOT overlap takes each cell of ground once.",
    "patches": "True when this patch holds no cell of the patch raster (each cell went to a nearer, or earlier, "
               "patch of another kept chip); the rows with overlap False are the patches the raster shows. "
               "WHERE NOT overlap takes each cell of ground once.",
    "overlap_fraction": "The fraction (0-1) of this chip's 32 px cells (those whose centre it contains) that "
                        "another kept chip's patches hold; overlap is overlap_fraction > 0.",
}  # fmt: skip


def overlap_field(name: str, kind: str) -> pa.Field:
    description = OVERLAP_DESCRIPTION[kind if name == "overlap" else name]
    kind_type = pa.bool_() if name == "overlap" else pa.float32()
    return pa.field(name, kind_type, nullable=False, metadata={"description": description})


def geo_metadata(multipart: bool = False) -> str:
    """The ``geo`` key: WKB polygons in OGC:CRS84 (no ``crs``: the GeoParquet default), counterclockwise,
    with the ``bbox`` column as their covering. ``multipart``: the scene crosses the antimeridian (or
    holds a pole), and every geometry of its files is a MultiPolygon, so ``geometry_types`` is exact."""
    return json.dumps({
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["MultiPolygon" if multipart else "Polygon"],
                                 "orientation": "counterclockwise",
                                 "covering": {"bbox": {name: ["bbox", name] for name in BBOX_FIELDS}}}},
    })  # fmt: skip


def chip_schema(dim: int, extra_metadata: dict[str, str], multipart: bool = False) -> pa.Schema:
    fields = [
        pa.field("source_url", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("sensor", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("embeddings", pa.list_(pa.float32(), dim)),
        pa.field("geometry", pa.binary()),
        pa.field("row", pa.int32()),
        pa.field("col", pa.int32()),
        pa.field("nodata_fraction", pa.float32()),
        overlap_field("overlap", "chips"),
        overlap_field("overlap_fraction", "chips"),
        pa.field("bbox", BBOX_TYPE),
    ]
    return pa.schema(fields, metadata={"geo": geo_metadata(multipart), **extra_metadata})


def patch_schema(dim: int, extra_metadata: dict[str, str], multipart: bool = False) -> pa.Schema:
    """One row per patch (the engine's patch size: Clay v0 32 × 32 px, v1.5 8 × 8 px): the patch tokens'
    mean over the engine's band groups (v1.5: one group)."""
    base = chip_schema(dim, extra_metadata, multipart)
    fields = [base.field(n) for n in ("source_url", "item_id", "model", "sensor", "date", "embeddings", "geometry", "row", "col")]
    fields += [pa.field("chip_row", pa.int32()), pa.field("chip_col", pa.int32()), overlap_field("overlap", "patches"),
               base.field("bbox")]
    return pa.schema(fields, metadata=base.metadata)


def scene_grid(transform, width: int, height: int) -> dict:
    """The scene's pixel grid as recorded under ``clay:scene_grid``: its geotransform (GDAL order:
    x0, pixel width, row rotation, y0, column rotation, pixel height; in ``clay:scene_crs``) and size
    in pixels. With each row's ``row``/``col`` it places the row's pixels exactly (``clay-change``
    rebuilds the patch raster's cells from it)."""
    return {"geotransform": [float(v) for v in transform.to_gdal()], "width": int(width), "height": int(height)}


def file_metadata(engine: EngineMetadata, scene_crs: str, applied: dict, grid: dict | None = None) -> dict[str, str]:
    """The key-value metadata of a scene's files (and its patch raster's tags); ``grid``: :func:`scene_grid`."""
    record = {
        "clay:model": engine.model,
        "clay:sensor": engine.sensor,
        "clay:engine": json.dumps(engine.to_dict()),
        "clay:scene_crs": scene_crs,
        "clay:preprocessing": json.dumps(applied),
    }
    if grid is not None:
        record["clay:scene_grid"] = json.dumps(grid)
    return record


def embeddings_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def geometry_columns(polygons, multipart: bool = False) -> dict[str, pa.Array]:
    """WKB geometry and its bounding box, the covering column GeoParquet readers filter on: the
    coordinates' ranges, so a geometry cut at the antimeridian has xmin −180 and xmax 180 and the
    readers' ``xmin <= east AND xmax >= west`` keeps it (RFC 7946's west > east would be dropped;
    see :func:`clay.runtime.scenes.geometry.bounding_boxes`). ``multipart``: every geometry is
    written as a MultiPolygon (see :func:`geo_metadata`)."""
    polygons = np.array(polygons, dtype=object)
    if multipart:
        for k in np.flatnonzero(shapely.get_type_id(polygons) == shapely.GeometryType.POLYGON):
            polygons[k] = shapely.MultiPolygon([polygons[k]])
    bounds = bounding_boxes(polygons)
    bbox = pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], fields=list(BBOX_TYPE))
    return {"geometry": pa.array(shapely.to_wkb(polygons).tolist(), pa.binary()), "bbox": bbox}


def row_columns(source: str, day: Date, embeddings: np.ndarray, polygons, multipart: bool = False,
                item_id: str | None = None, model: str = "clay-v0", sensor: str | None = None, **columns) -> dict:  # fmt: skip
    """The columns of a batch of rows (chips or patches): what every row shares (``item_id``: the
    scene's STAC Item, ``None`` for files; ``model``, ``sensor``: what made them), the embeddings, the
    geometry with its bbox, and the file kind's own integer columns (``row``, ``col``...)."""
    count = len(embeddings)
    return {"source_url": [source] * count, "item_id": [item_id] * count, "model": [model] * count,
            "sensor": [sensor] * count, "date": [day] * count,
            "embeddings": embeddings_column(embeddings), **columns, **geometry_columns(polygons, multipart)}  # fmt: skip


def warm_up() -> None:
    """pyarrow sets up its numpy conversion on first use (~0.2 s): a run pays it before its first
    read, not inside the chip loop where the engine would wait for it."""
    pa.array(np.zeros(1, np.float32))


class AtomicParquetWriter:
    """Streams rows into ``<path>.partial`` in row groups of :data:`ROW_GROUP_ROWS`, and publishes
    it durably under ``path`` on :meth:`commit` (see the module docstring). Write errors (disk full,
    permissions) are an :class:`OutputError` naming the file."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.partial = partial_path(path)
        self.schema = schema
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        with naming(self.partial):
            self._writer = pq.ParquetWriter(self.partial, schema, compression="zstd")

    def write(self, columns: dict[str, object]) -> None:
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if not table.num_rows:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            with naming(self.partial):
                self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def commit(self) -> Path:
        """Flush, fsync, rename, fsync the directory: the file under ``path`` is complete and durable."""
        self._flush()
        with naming(self.partial):
            self._writer.close()
            return publish(self.partial, self.path)

    def abort(self) -> None:
        """Drop everything written; nothing is left under either name."""
        self._pending = []
        try:
            self._writer.close()
        except OSError:
            pass
        self.partial.unlink(missing_ok=True)


class SceneOutput:
    """A scene's writers: the patch raster and patch file are published first and the chip file
    last, and a failure of any leaves no file of the scene under a final name. ``raster`` is the
    scene's :class:`clay.runtime.outputs.patch_raster.PatchRasterWriter` when ``paths.raster`` is set;
    ``claims`` plays the patch raster's rule over the kept chips for the overlap columns, and
    :meth:`defer` holds back the rows whose overlap a later chip may still change until :meth:`commit`."""

    def __init__(self, paths: ScenePaths, dim: int, extra_metadata: dict[str, str], claims: GroundClaims,
                 multipart: bool = False, raster=None) -> None:  # fmt: skip
        self.paths = paths
        self.raster = raster
        self.claims = claims
        self.deferred: list = []
        # the model and sensor columns of every row (file_metadata's clay:model, clay:sensor; v0: no sensor)
        self.model = extra_metadata.get("clay:model", "clay-v0")
        self.sensor = extra_metadata.get("clay:sensor") or None
        self.chips = self.patches = None
        try:
            self.chips = AtomicParquetWriter(paths.chips, chip_schema(dim, extra_metadata, multipart))
            if paths.patches:
                self.patches = AtomicParquetWriter(paths.patches, patch_schema(dim, extra_metadata, multipart))
        except BaseException:
            self.abort()
            raise

    @property
    def needs_patch_means(self) -> bool:
        """Whether rows need the chips' patch vectors (a patch file or a patch raster)."""
        return self.patches is not None or self.raster is not None

    def defer(self, write_rows) -> None:
        """Call ``write_rows()`` (which writes rows through :attr:`chips` and :attr:`patches`) on
        :meth:`commit`, after the scene's last chip, instead of now."""
        self.deferred.append(write_rows)

    def commit(self) -> None:
        for write_rows in self.deferred:
            write_rows()
        self.deferred = []
        published: list[Path] = []
        try:
            for writer in (self.raster, self.patches, self.chips):
                if writer is not None:
                    published.append(writer.commit())
        except BaseException:
            for path in published:
                path.unlink(missing_ok=True)
            if published:
                fsync(published[0].parent)
            raise

    def abort(self) -> None:
        self.deferred = []
        for writer in (self.chips, self.patches, self.raster):
            if writer is not None:
                writer.abort()


