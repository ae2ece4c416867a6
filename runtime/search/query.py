"""A query and its answer: what to look for (a point, row ids, a vector, or several of the first two
as positive examples) and the top-k rows, best first, each piece of ground once.

- **point** (lon, lat, degrees): the rows whose footprint covers it, one per scene (of a scene's
  rows covering it, one without ``overlap`` if any, then the one whose centre is nearest);
- **id** (``<scene>:<row>:<col>``, see :mod:`.archive`): that row;
- **vector**: ``dim`` numbers;
- **several** points and ids: positive examples, their rows' unit vectors averaged.

The score is the cosine between the query vector and a row's. Never returned: the query's own rows,
rows whose ground overlaps theirs (any scene: the same place at another date is not a "similar
place"), rows with ``overlap`` True (``include_overlaps`` keeps them), and a row whose ground
overlaps a better one already returned (``include_overlaps`` also keeps those). Ground overlaps when
the footprints share more than :data:`OVERLAP_TOLERANCE` of the smaller one's area (touching edges do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely

from .archive import Archive, SearchError, normalise, open_archive
from .index import open_index

#: Footprints sharing less than this share of the smaller one's area are neighbours, not the same
#: ground: adjacent rows share an edge, whose intersection reprojection may leave a sliver of.
OVERLAP_TOLERANCE = 1e-3


@dataclass
class Query:
    """``vector [dim]`` float32 (unit or zero), the archive rows it was taken from (may be empty) and
    what was asked, for messages."""

    vector: np.ndarray
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    asked: str = ""


def parse_vector(text: str | Path | Sequence[float] | np.ndarray) -> np.ndarray:
    """A vector given as numbers, a ``.npy`` file, or a comma-separated list of numbers."""
    if isinstance(text, (str, Path)) and str(text).endswith(".npy"):
        try:
            return np.asarray(np.load(text, allow_pickle=False), np.float32).ravel()
        except (OSError, ValueError) as exc:
            raise SearchError(f"{text}: cannot read the vector ({str(exc).splitlines()[0]})") from None
    if isinstance(text, (str, Path)):
        try:
            return np.array([float(v) for v in str(text).split(",") if v.strip()], np.float32)
        except ValueError:
            raise SearchError(f"--vector {str(text)[:40]}: neither a .npy file nor numbers separated by commas") from None
    return np.asarray(text, np.float32).ravel()


def rows_at_point(archive: Archive, lon: float, lat: float) -> np.ndarray:
    """The rows covering (lon, lat), one per scene (see the module docstring)."""
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise SearchError(f"point {lon:g}, {lat:g}: not a longitude, latitude in degrees")
    bbox = archive.rows["bbox"].combine_chunks()
    xmin, ymin, xmax, ymax = (np.asarray(bbox.field(n)) for n in ("xmin", "ymin", "xmax", "ymax"))
    near = np.flatnonzero((xmin <= lon) & (xmax >= lon) & (ymin <= lat) & (ymax >= lat))
    geometries = shapely.from_wkb(archive.rows["geometry"].take(pa.array(near)).to_pylist())
    point = shapely.Point(lon, lat)
    near = near[shapely.covers(geometries, point)] if len(near) else near
    if not len(near):
        raise SearchError(f"point {lon:g}, {lat:g} lies outside every scene of the archive "
                          f"({xmin.min():.4f}…{xmax.max():.4f} E, {ymin.min():.4f}…{ymax.max():.4f} N)")  # fmt: skip
    files, overlap = np.asarray(archive.rows["file"])[near], archive.overlap[near]
    centres = shapely.centroid(shapely.from_wkb(archive.rows["geometry"].take(pa.array(near)).to_pylist()))
    distance = shapely.distance(centres, point)
    picked = []
    for number in np.unique(files):  # one row per scene: without overlap first, then the nearest centre
        mine = np.flatnonzero(files == number)
        picked.append(near[mine[np.lexsort((distance[mine], overlap[mine]))[0]]])
    return np.array(picked, np.int64)


def rows_of_ids(archive: Archive, ids: Sequence[str]) -> np.ndarray:
    where = {row_id: k for k, row_id in enumerate(archive.ids)}
    missing = [i for i in ids if i not in where]
    if missing:
        example = archive.ids[0]
        raise SearchError(f"no row {missing[0]!r} in the archive (ids are <scene>:<row>:<col>, e.g. {example!r})")
    return np.array([where[i] for i in ids], np.int64)


def make_query(archive: Archive, points: Sequence[tuple[float, float]] = (), ids: Sequence[str] = (),
               vector=None) -> Query:  # fmt: skip
    """The query vector: a ``vector`` of the archive's length, or the mean of the unit vectors of the
    rows at ``points`` and of ``ids`` (raises :class:`SearchError` for none, both, or a bad one)."""
    if vector is not None and (points or ids):
        raise SearchError("give a vector, or points and ids, not both")
    if vector is not None:
        values = parse_vector(vector)
        if values.shape != (archive.dim,):
            raise SearchError(f"the vector has {values.size} values; the archive's {archive.model} embeddings have {archive.dim}")
        if not np.isfinite(values).all() or not values.any():
            raise SearchError("the vector holds NaN, infinity or only zeros")
        return Query(normalise(values), asked="a vector")
    if not (points or ids):
        raise SearchError("nothing to search for: give a point, an id or a vector")
    rows = np.concatenate([*(rows_at_point(archive, lon, lat) for lon, lat in points), rows_of_ids(archive, list(ids))])
    rows = np.unique(rows)
    units = archive.unit_vectors_of(rows)
    asked = ", ".join([*(f"point {lon:g}, {lat:g}" for lon, lat in points), *ids])
    return Query(normalise(units.mean(axis=0)), rows, asked)  # unit: scores are cosines


def same_ground(geometries: np.ndarray, taken) -> np.ndarray:
    """``[n]`` bool: whether each footprint shares more than :data:`OVERLAP_TOLERANCE` of the smaller
    area with the geometry ``taken`` (None: nothing taken)."""
    if taken is None or not len(geometries):
        return np.zeros(len(geometries), bool)
    shared = shapely.area(shapely.intersection(geometries, taken))
    smaller = np.minimum(shapely.area(geometries), shapely.area(taken))
    return shared > OVERLAP_TOLERANCE * np.maximum(smaller, 1e-30)


def top_rows(archive: Archive, index, query: Query, k: int, include_overlaps: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The archive rows of the answer and their scores, best first (see the module docstring)."""
    geometry = archive.rows["geometry"]
    own = shapely.union_all(shapely.from_wkb(geometry.take(pa.array(query.rows)).to_pylist())) if len(query.rows) else None
    overlap = archive.overlap
    count = min(len(archive), max(4 * k, k + 64))
    while True:
        rows, scores = index.candidates(query.vector, count)
        keep = ~np.isin(rows, query.rows)
        if not include_overlaps:
            keep &= ~overlap[rows]
        rows, scores = rows[keep], scores[keep]
        shapes = shapely.from_wkb(geometry.take(pa.array(rows)).to_pylist()) if len(rows) else np.zeros(0, object)
        clear = ~same_ground(shapes, own)
        picked: list[int] = []
        taken = None
        for position in np.flatnonzero(clear):
            if len(picked) == k:
                break
            if not include_overlaps and same_ground(shapes[position : position + 1], taken)[0]:
                continue
            picked.append(position)
            taken = shapes[position] if taken is None else shapely.union(taken, shapes[position])
        if len(picked) == k or count >= len(archive):
            return rows[picked], scores[picked]
        count = min(len(archive), count * 4)


def answer_table(archive: Archive, rows: np.ndarray, scores: np.ndarray) -> pa.Table:
    """The answer's rows: ``rank`` (1…), ``score`` (cosine), ``id``, the rows' scene (``source_url``),
    ``date``, ``row``, ``col``, ``overlap``, ``geometry`` (WKB, OGC:CRS84) and ``bbox``."""
    picked = archive.rows.take(pa.array(rows, pa.int64()))
    columns = {"rank": pa.array(np.arange(1, len(rows) + 1, dtype=np.int32)), "score": pa.array(scores.astype(np.float32)),
               **{name: picked[name] for name in ("id", "source_url", "date", "row", "col", "overlap", "geometry", "bbox")}}  # fmt: skip
    return pa.table(columns)


def search(inputs: Sequence[str | Path], points: Sequence[tuple[float, float]] = (), ids: Sequence[str] = (),
           vector=None, k: int = 10, kind: str = "chips", mode: str = "exact", index_folder: str | Path | None = None,
           include_overlaps: bool = False, archive: Archive | None = None, log=lambda message: None) -> pa.Table:  # fmt: skip
    """The top ``k`` rows of the clay-run outputs ``inputs`` (folders or GeoParquet files of one
    ``kind``, "chips" or "patches", and one model) for a query (see the module docstring), as
    :func:`answer_table`. ``mode`` "exact" scores every row (numpy); "index" asks a LanceDB IVF-PQ
    index (the search extra), built in ``index_folder`` (default ``.clay-search/<kind>`` beside the
    first input) and rebuilt when an input changes. Raises :class:`SearchError` (one line) for a
    query or input it cannot take. ``archive``: one already opened (:func:`open_archive`), reused."""
    if k < 1:
        raise SearchError(f"k must be at least 1, not {k}")
    archive = archive if archive is not None else open_archive(list(inputs), kind)
    query = make_query(archive, points, ids, vector)
    index = open_index(archive, mode, Path(index_folder) if index_folder is not None else None, log)
    rows, scores = top_rows(archive, index, query, k, include_overlaps)
    return answer_table(archive, rows, scores)
