"""The rows a search runs over: one or more clay-run output folders or GeoParquet files of one kind
(chips or patches) and one model (``clay:engine``'s ``model`` and ``dim``), read once.

A row's **id** is ``<scene>:<row>:<col>``: the file's name without ``.parquet`` / ``.patches.parquet``
(with its folder relative to the inputs' common folder when several folders are searched, so two
runs of one scene name stay apart), and the row's ``row``, ``col`` pixel offsets (the chip's, or the
patch's, in the scene's grid). The rows are in the order of the sorted files, each file's rows in
file order; :attr:`Archive.fingerprint` changes when any file does (path, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

KINDS = ("chips", "patches")
PATCH_SUFFIX = ".patches.parquet"
#: The columns a search keeps beside the vectors (``overlap`` is False where a file predates it).
COLUMNS = ("source_url", "date", "row", "col", "geometry", "bbox")


class SearchError(ValueError):
    """A search that cannot run as asked: one line saying why (clay-search prints it and exits 1)."""


@dataclass
class Archive:
    """Rows of one kind and one model. ``rows``: a pyarrow table of :data:`COLUMNS` plus ``id``,
    ``overlap`` (bool) and ``file`` (index into ``files``); the vectors are read on demand."""

    files: list[Path]
    kind: str
    model: str
    dim: int
    rows: pa.Table
    fingerprint: str
    _units: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def ids(self) -> list[str]:
        return self.rows["id"].to_pylist()

    @property
    def overlap(self) -> np.ndarray:
        return np.asarray(self.rows["overlap"], dtype=bool)

    def unit_vectors(self) -> np.ndarray:
        """``[n, dim]`` float32, each row's embedding divided by its norm (read once, then kept)."""
        if self._units is None:
            parts = [embeddings(pq.read_table(path, columns=["embeddings"])["embeddings"], self.dim)
                     for path in self.files]  # fmt: skip
            self._units = normalise(np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32))
        return self._units

    def unit_vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), dim]`` float32 unit vectors of some rows, reading only their files' embeddings
        when the whole archive's are not loaded (a query's rows, when an index answers)."""
        rows = np.asarray(rows, np.int64)
        if self._units is not None or not len(rows):
            return self.unit_vectors()[rows] if len(rows) else np.zeros((0, self.dim), np.float32)
        files = np.asarray(self.rows["file"])
        starts = np.searchsorted(files, np.arange(len(self.files)))  # rows are in file order
        out = np.empty((len(rows), self.dim), np.float32)
        for number in np.unique(files[rows]):
            mine = np.flatnonzero(files[rows] == number)
            column = pq.read_table(self.files[number], columns=["embeddings"])["embeddings"]
            out[mine] = embeddings(column, self.dim)[rows[mine] - starts[number]]
        return normalise(out)


def embeddings(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size-list column as ``[n, dim]`` float32 (no copy per row)."""
    flat = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return (np.concatenate(flat) if flat else np.zeros(0, np.float32)).astype(np.float32, copy=False).reshape(-1, dim)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (a zero row stays zero: its cosine with anything is 0)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def output_files(inputs: list[Path], kind: str) -> list[Path]:
    """The GeoParquet files of ``kind`` in the inputs: a folder's ``*.parquet`` (chips) or
    ``*.patches.parquet`` (patches), a file as it is."""
    if kind not in KINDS:
        raise SearchError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    found = []
    for path in inputs:
        if path.is_dir():
            names = sorted(p for p in path.glob("*.parquet") if p.is_file())
            # a folder's other GeoParquet files (clay-search --out results written beside the run, say)
            # are not rows to search: only clay-run's files, which carry clay:engine, are taken
            found += [p for p in names if p.name.endswith(PATCH_SUFFIX) == (kind == "patches") and _from_clay_run(p)]
        elif path.is_file():
            found.append(path)
        else:
            raise SearchError(f"{path}: no such file or folder")
    if not found:
        raise SearchError(f"no {kind} files in {', '.join(str(p) for p in inputs) or 'no inputs'}"
                          + (" (clay-run writes patch files with --patch-embeddings)" if kind == "patches" else ""))
    return sorted(dict.fromkeys(p.resolve() for p in found))


def _from_clay_run(path: Path) -> bool:
    """Whether a file found in a folder is a clay-run output (its schema carries ``clay:engine``);
    one that cannot be read is taken, so that :func:`describe` says why."""
    try:
        return b"clay:engine" in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowInvalid):
        return True


def describe(path: Path) -> tuple[str, str, int, str]:
    """A file's (kind, model, dim, weights), from its schema and ``clay:engine`` metadata (weights:
    the checkpoint's SHA-256, so that two checkpoints of one model and width are not mixed either;
    the precisions exported from one checkpoint share it)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SearchError(f"{path}: not a GeoParquet file ({str(exc).splitlines()[0]})") from None
    record = (schema.metadata or {}).get(b"clay:engine")
    if record is None or "embeddings" not in schema.names:
        raise SearchError(f"{path}: not a clay-run output (no clay:engine metadata or embeddings column)")
    engine = json.loads(record)
    kind = "patches" if "chip_row" in schema.names else "chips"
    return kind, str(engine.get("model", "clay-v0")), int(engine["dim"]), str(engine.get("checkpoint_sha256", ""))


def scene_names(files: list[Path]) -> list[str]:
    """Each file's scene name for its rows' ids (see the module docstring)."""
    common = Path(os.path.commonpath([str(p.parent) for p in files]))
    names = []
    for path in files:
        stem = path.name.removesuffix(PATCH_SUFFIX).removesuffix(".parquet")
        names.append(str((path.parent / stem).relative_to(common)))
    return names


def fingerprint(files: list[Path], kind: str, model: str, dim: int) -> str:
    """Changes when a file is added, removed, rewritten or touched."""
    record = [kind, model, dim, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()


def open_archive(inputs: list[str | Path], kind: str = "chips") -> Archive:
    """The rows of ``kind`` in ``inputs`` (folders or files). Raises :class:`SearchError` for no
    files, a file that is not a clay-run output, chips and patches together, or two models or
    embedding sizes (v0 and v1.5 runs are searched apart: their vectors are not comparable)."""
    files = output_files([Path(p) for p in inputs], kind)
    described = {path: describe(path) for path in files}
    kinds = {d[0] for d in described.values()}
    if len(kinds) > 1:
        raise SearchError("chip and patch files together: search one kind at a time (--patches for patch files)")
    if kinds != {kind}:
        raise SearchError(f"{files[0]}: a {kinds.pop()} file, not {kind} (--patches for patch files)")
    models = {d[1:]: path for path, d in described.items()}
    if len(models) > 1:
        (m1, d1, w1), (m2, d2, w2) = list(models)[:2]
        weights = f", weights {w1[:12] or '?'}" if (m1, d1) == (m2, d2) else ""
        other = f", weights {w2[:12] or '?'}" if weights else ""
        raise SearchError(f"{models[m1, d1, w1]} is {m1} ({d1}-dim{weights}), {models[m2, d2, w2]} is {m2} "
                          f"({d2}-dim{other}): search one model at a time")  # fmt: skip
    ((model, dim, _),) = models
    tables = []
    for number, (path, name) in enumerate(zip(files, scene_names(files))):
        table = pq.read_table(path, columns=[c for c in (*COLUMNS, "overlap") if c in pq.read_schema(path).names])
        count = table.num_rows
        ids = [f"{name}:{r}:{c}" for r, c in zip(table["row"].to_pylist(), table["col"].to_pylist())]
        overlap = table["overlap"] if "overlap" in table.column_names else pa.array(np.zeros(count, bool))
        tables.append(table.select(list(COLUMNS)).append_column("overlap", overlap)
                      .append_column("id", pa.array(ids, pa.string()))
                      .append_column("file", pa.array(np.full(count, number, np.int32))))  # fmt: skip
    rows = pa.concat_tables(tables)
    if not rows.num_rows:
        raise SearchError(f"no rows in {', '.join(str(p) for p in files)}")
    return Archive(files, kind, model, dim, rows, fingerprint(files, kind, model, dim))
