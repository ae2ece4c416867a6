"""``clay-search``: the rows of clay-run outputs most like a point, a row, a vector or a few examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from ..console import require_extra, setup_logging
from ..outputs.geoparquet import geo_metadata
from ..outputs.publish import OutputError, naming, partial_path, publish
from .archive import SearchError
from .query import search

FORMATS = {".parquet": "GeoParquet", ".geoparquet": "GeoParquet", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def parse_point(text: str) -> tuple[float, float]:
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give LON,LAT in degrees, e.g. 103.72,17.91") from None
    return lon, lat


def write_answer(table: pa.Table, path: Path) -> Path:
    """The answer as GeoParquet (``geo`` metadata, WKB in OGC:CRS84, the bbox covering) or as a GeoJSON
    FeatureCollection, by ``path``'s extension; written under ``.partial`` and renamed."""
    partial = partial_path(path)
    with naming(partial):
        if FORMATS[path.suffix.lower()] == "GeoParquet":
            types = sorted({shapely.get_type_id(g) for g in shapely.from_wkb(table["geometry"].to_pylist())})
            geo = json.loads(geo_metadata(multipart=types == [shapely.GeometryType.MULTIPOLYGON]))
            if len(types) > 1:
                geo["columns"]["geometry"]["geometry_types"] = ["Polygon", "MultiPolygon"]
            pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), partial, compression="zstd")
        else:
            shapes = shapely.from_wkb(table["geometry"].to_pylist())
            records = table.drop_columns(["geometry", "bbox"]).to_pylist()
            features = [{"type": "Feature", "geometry": shapely.geometry.mapping(shape),
                         "properties": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in record.items()}}
                        for shape, record in zip(shapes, records)]  # fmt: skip
            partial.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        return publish(partial, path)


def terminal_table(table: pa.Table) -> str:
    """One line per row: rank, score, id, date, and its footprint's centre (lon, lat)."""
    centres = shapely.centroid(shapely.from_wkb(table["geometry"].to_pylist()))
    lines = [f"{'rank':>4}  {'score':>7}  {'date':<10}  {'lon':>10}  {'lat':>9}  id"]
    for rank, score, row_id, day, centre in zip(table["rank"].to_pylist(), table["score"].to_pylist(), table["id"].to_pylist(),
                                                table["date"].to_pylist(), centres):  # fmt: skip
        lines.append(f"{rank:>4}  {score:7.4f}  {day.isoformat():<10}  {centre.x:10.5f}  {centre.y:9.5f}  {row_id}")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--point", "points", multiple=True, metavar="LON,LAT",
              help="Search for what lies at this point (degrees): the row covering it in each scene. Repeatable.")
@click.option("--id", "ids", multiple=True, metavar="SCENE:ROW:COL",
              help="Search for this row (its scene's file name, and its row, col pixel offsets). Repeatable.")
@click.option("--vector", default=None, metavar="FILE.npy|V1,V2,…", help="Search for this vector (the archive's dim values).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Rows to return.")
@click.option("--patches", is_flag=True, help="Search the patch files (*.patches.parquet) instead of the chip files.")
@click.option("--mode", type=click.Choice(["exact", "index"]), default="exact", show_default=True,
              help="exact: score every row (numpy); index: a LanceDB IVF-PQ index (the search extra), for large archives.")
@click.option("--index", "index_folder", type=click.Path(path_type=Path), default=None,
              help="Where --mode index keeps its index [default: .clay-search/<chips|patches> beside the first input]; "
                   "rebuilt when an input changes.")
@click.option("--include-overlaps", is_flag=True,
              help="Also return rows with overlap True and rows sharing ground with a better one.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write the rows to this file: .parquet (GeoParquet) or .geojson.")
def main(inputs, points, ids, vector, k, patches, mode, index_folder, include_overlaps, out) -> None:
    """The top K rows of clay-run's GeoParquet outputs (INPUTS: output folders or files, one model)
    most like a query, by the cosine of their embeddings: a --point, an --id, a --vector, or several
    --point/--id as positive examples (their unit vectors averaged). The query's own rows and rows
    sharing its ground are left out, and each piece of ground comes back once (rows with overlap
    True are left out: --include-overlaps keeps both). Prints rank, score, date, centre and id."""
    if mode == "index":
        require_extra("clay-search", "search")
    setup_logging("clay-search")
    if out is not None and out.suffix.lower() not in FORMATS:
        raise click.BadParameter(f"{out.name}: give a .parquet or .geojson file", param_hint="--out")
    try:
        table = search(inputs, [parse_point(p) for p in points], ids, vector, k, "patches" if patches else "chips", mode,
                       index_folder, include_overlaps, log=lambda message: click.echo(f"clay-search: {message}", err=True))  # fmt: skip
        if out is not None:
            write_answer(table, out)
    except (SearchError, OutputError) as exc:
        click.echo(f"clay-search: {exc}", err=True)
        sys.exit(1)
    click.echo(terminal_table(table))
    if len(table) < k:
        click.echo(f"clay-search: {len(table)} rows of {k}: the archive holds no more of other ground", err=True)
