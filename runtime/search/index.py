"""Nearest rows by cosine: exact (numpy, every row scored) or approximate (a LanceDB IVF-PQ index).

Both return candidates best first as (row numbers of the archive, cosine scores). The approximate
index is LanceDB (what Clay's own tutorial uses), IVF-PQ over the rows' unit vectors with cosine
distance, its answers re-ranked on the full vectors (``refine_factor``). Its parameters, chosen by
measurement (``python -m clay.benchmarks.search``, figures in the README): √n IVF
partitions (at most n / 256), a PQ sub-vector per 8 dimensions, :data:`NPROBE_FRACTION` of the partitions
probed (at least :data:`MIN_NPROBES`), :data:`REFINE_FACTOR`. At 10⁶ clustered 1024-dim rows
(benchmarks/results/search.md) 20, 50, 100 and 500 probes of 1 000 partitions gave recall@10 0.730,
0.886, 0.956 and 0.998: half the partitions keeps recall well above 0.95 on a query set where a
tenth was borderline. Below :data:`MIN_INDEX_ROWS` rows no index is trained (PQ needs 256 rows per
codebook and IVF a few per partition): LanceDB then scans every row, so the answer is exact.

The index lives in a folder (``--index``; by default ``.clay-search/<kind>`` in the first input's
folder) with ``manifest.json`` holding the archive's fingerprint: a changed, added or removed input
file rebuilds it (into ``<folder>.partial``, renamed when complete).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..outputs.publish import PARTIAL_SUFFIX
from .archive import Archive, SearchError

MIN_INDEX_ROWS = 1000
NPROBE_FRACTION = 0.5
MIN_NPROBES = 20
REFINE_FACTOR = 10
SUB_VECTOR_DIMS = 8
#: Lance trains an IVF partition only with this many rows (it warns and trains fewer otherwise).
TRAIN_ROWS_PER_PARTITION = 256
INDEX_VERSION = 1  # bumped when the layout or the parameters change: older indexes are rebuilt
TABLE = "vectors"


class ExactIndex:
    """Every row scored: ``unit [n, dim] @ query`` (float32), sorted."""

    kind = "exact"

    def __init__(self, archive: Archive) -> None:
        self.units = archive.unit_vectors()

    def candidates(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.units @ np.asarray(query, np.float32)
        count = min(count, len(scores))
        top = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
        order = top[np.lexsort((top, -scores[top]))]  # best first; equal scores by row order
        return order, scores[order]


def default_folder(archive: Archive) -> Path:
    return archive.files[0].parent / ".clay-search" / archive.kind


def partitions(rows: int) -> int:
    """√rows IVF partitions, at most one per :data:`TRAIN_ROWS_PER_PARTITION` rows (Lance trains no more)."""
    return max(1, min(round(math.sqrt(rows)), rows // TRAIN_ROWS_PER_PARTITION))


class LanceIndex:
    """A LanceDB table of (row, unit vector) with an IVF-PQ cosine index, opened or (re)built."""

    kind = "index"

    def __init__(self, archive: Archive, folder: Path | None = None, log=lambda message: None) -> None:
        import lancedb  # the search extra; checked by clay-search before it gets here

        self.folder = Path(folder) if folder is not None else default_folder(archive)
        self.rows = len(archive)
        self.built_s: float | None = None
        manifest = self.folder / "manifest.json"
        wanted = {"version": INDEX_VERSION, "fingerprint": archive.fingerprint, "rows": self.rows, "dim": archive.dim}
        current = None
        if manifest.is_file():
            try:
                current = json.loads(manifest.read_text())
            except ValueError:
                current = None
        if current is None or any(current.get(k) != v for k, v in wanted.items()):
            log(f"building the index of {self.rows} rows in {self.folder}")
            try:
                self.built_s = self._build(archive, wanted)
            except OSError as exc:  # a read-only output folder, a full disk
                raise SearchError(f"{self.folder}: cannot write the index ({exc.strerror or exc}); "
                                  "give another folder with --index") from None  # fmt: skip
        self.table = lancedb.connect(self.folder / "db").open_table(TABLE)
        self.indexed = self.rows >= MIN_INDEX_ROWS
        self.nprobes = max(MIN_NPROBES, math.ceil(NPROBE_FRACTION * partitions(self.rows)))

    def _build(self, archive: Archive, manifest: dict) -> float:
        import lancedb
        from lancedb.index import IvfPq

        start = time.perf_counter()
        partial = self.folder.with_name(self.folder.name + PARTIAL_SUFFIX)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        units = archive.unit_vectors()
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(units.ravel(), pa.float32()), archive.dim)
        table = lancedb.connect(partial / "db").create_table(TABLE, pa.table({"row": np.arange(len(units)), "vector": vectors}))
        if len(units) >= MIN_INDEX_ROWS:
            sub_vectors = max(1, archive.dim // SUB_VECTOR_DIMS)
            while archive.dim % sub_vectors:
                sub_vectors -= 1
            table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions(len(units)),
                                                      num_sub_vectors=sub_vectors))  # fmt: skip
        (partial / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(self.folder, ignore_errors=True)
        partial.rename(self.folder)
        return time.perf_counter() - start

    def candidates(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        search = self.table.search(np.asarray(query, np.float32)).distance_type("cosine").limit(count).select(["row", "_distance"])
        if self.indexed:
            search = search.nprobes(self.nprobes).refine_factor(REFINE_FACTOR)
        found = search.to_arrow()
        rows = np.asarray(found["row"], np.int64)
        scores = 1.0 - np.asarray(found["_distance"], np.float32)
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order]


def open_index(archive: Archive, mode: str, folder: Path | None = None, log=lambda message: None):
    """``mode`` "exact" (:class:`ExactIndex`) or "index" (:class:`LanceIndex`)."""
    if mode == "exact":
        return ExactIndex(archive)
    if mode == "index":
        return LanceIndex(archive, folder, log)
    raise SearchError(f"unknown mode {mode!r}; choose exact or index")
