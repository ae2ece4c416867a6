"""GeoParquet output, streamed one batch at a time and published atomically.

Rows follow the published Clay embeddings schema (``source_url``, ``date``, ``embeddings``,
``geometry`` in OGC:CRS84) plus ``row``, ``col`` and ``nodata_fraction``. Files are written under a
``.partial`` name and renamed only once complete, so a killed run never leaves a file that looks
finished.
"""

from __future__ import annotations

import json
import os
from datetime import date as Date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from .metadata import EngineMetadata

GEOPARQUET_VERSION = "1.1.0"


def chip_schema(dim: int, extra_metadata: dict[str, str]) -> pa.Schema:
    # GeoParquet: a column without "crs" is OGC:CRS84 (lon/lat), which is what we write.
    geo = {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}},
    }
    fields = [
        pa.field("source_url", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("embeddings", pa.list_(pa.float32(), dim)),
        pa.field("geometry", pa.binary()),
        pa.field("row", pa.int32()),
        pa.field("col", pa.int32()),
        pa.field("nodata_fraction", pa.float32()),
    ]
    return pa.schema(fields, metadata={"geo": json.dumps(geo), **extra_metadata})


def patch_schema(dim: int, extra_metadata: dict[str, str]) -> pa.Schema:
    """One row per 32 × 32 px patch: the patch tokens' mean over the engine's band groups."""
    base = chip_schema(dim, extra_metadata)
    fields = [base.field(n) for n in ("source_url", "date", "embeddings", "geometry", "row", "col")]
    fields += [pa.field("chip_row", pa.int32()), pa.field("chip_col", pa.int32())]
    return pa.schema(fields, metadata=base.metadata)


def file_metadata(engine: EngineMetadata, scene_crs: str, applied: dict[str, str]) -> dict[str, str]:
    return {
        "clay:engine": json.dumps(engine.to_dict()),
        "clay:scene_crs": scene_crs,
        "clay:preprocessing": json.dumps(applied),
    }


class AtomicParquetWriter:
    """Streams record batches into ``<path>.partial`` and renames it to ``path`` on :meth:`commit`."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.schema = schema
        self.rows = 0
        self._writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        # pyarrow sets up its numpy conversion on first use (~0.2 s): pay it here, before the first
        # batch, so it is not taken from the engine's time inside the chip loop.
        pa.array(np.zeros(1, np.float32))

    def write(self, columns: dict[str, object]) -> None:
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def commit(self) -> Path:
        self._writer.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self.partial.unlink(missing_ok=True)


def embeddings_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def chip_columns(source: str, day: Date, embeddings: np.ndarray, polygons, rows, cols, fractions) -> dict:
    return {
        "source_url": [source] * len(rows),
        "date": [day] * len(rows),
        "embeddings": embeddings_column(embeddings),
        "geometry": shapely.to_wkb(np.asarray(polygons, dtype=object)).tolist(),
        "row": rows,
        "col": cols,
        "nodata_fraction": fractions,
    }
