"""Right answers on the scenes people actually have (each case a kind of input from public bug
reports, built here the way users' files are built): footprints from any geotransform, masks and
nodata, units and scale, the Sentinel-2 offset per scene, the scene grid, dates, discovery, and one
failing scene never ending a --keep-going run.

Expected values are computed independently of the runtime (footprints with pyproj alone) or are the
same physical scene encoded plainly (embeddings must then be equal: cosine ≥ 0.9999).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from clay.runtime import ClayEmbedder, RunOptions, SceneError
from clay.runtime.bands import S2_BANDS
from clay.runtime.cli import DEMO_ENGINE
from clay.runtime.scenes.headers import read_header
from clay.runtime.scenes.grid import Chip, patch_cells
from clay.training.synthetic import make_scene_array
from pyproj import Transformer
from rasterio.enums import MaskFlags
from rasterio.transform import Affine

from .inputs import check_window, iou, reference_footprint, unwrapped, write_stack

S2 = list(S2_BANDS)


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def s2_cube(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.rint(make_scene_array(height, width, seed)[:10]).astype(np.uint16)


def utm(lon: float, lat: float, epsg: int) -> tuple[float, float]:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)


def embeddings(table) -> np.ndarray:
    return np.stack(table["embeddings"].to_numpy(zero_copy_only=False))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def preprocessing(table) -> dict:
    return json.loads(table.schema.metadata[b"clay:preprocessing"])


@pytest.fixture(scope="module")
def s2_embedder():
    with ClayEmbedder(DEMO_ENGINE) as embedder:
        yield embedder


@pytest.fixture(scope="module")
def sar_dem_engine(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="a SAR + DEM engine is exported with the [export] extra")
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("sardem")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=("sar", "dem")), log=lambda _: None)
    return out / "clay.onnx"


@pytest.fixture(scope="module")
def s2_dem_engine(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="an S2 + DEM engine is exported with the [export] extra")
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("s2dem")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=("rgb", "rededge", "nir", "swir", "dem")),
                     log=lambda _: None)  # fmt: skip
    return out / "clay.onnx"


# --- footprints --------------------------------------------------------------------------------------


def am_scene(tmp_path: Path) -> tuple[Path, Affine]:
    """1536 × 512 px at 10 m in EPSG:32660 at 65° N whose columns cross 180°."""
    x, y = utm(180.0, 65.0, 32660)
    transform = Affine(10, 0, x - 7000, 0, -10, y)
    scene = write_stack(tmp_path / "am.tif", s2_cube(512, 1536), transform, "EPSG:32660", S2, tags={"date": "2021-07-01"})
    return scene, transform


def test_a_scene_across_the_antimeridian_gets_multipolygons_cut_at_180_with_bboxes_spanning_it(s2_embedder, tmp_path):
    """Was one invalid, self-intersecting polygon per chip with a bbox spanning the globe; then
    RFC 7946 bboxes (west > east) that readers' bbox filters dropped. Now: MultiPolygons cut at
    180°, and a row cut there has the bbox −180…180 that those filters keep."""
    scene, transform = am_scene(tmp_path)
    result = s2_embedder.embed_scene_to(scene, tmp_path / "am.parquet", RunOptions(patch_embeddings=True))
    chips, patches = pq.read_table(result.output), pq.read_table(result.patches)
    geo = json.loads(chips.schema.metadata[b"geo"])["columns"]["geometry"]
    assert geo["geometry_types"] == ["MultiPolygon"] and geo["orientation"] == "counterclockwise"
    for row in chips.to_pylist():
        geometry = shapely.from_wkb(row["geometry"])
        assert geometry.is_valid and geometry.geom_type == "MultiPolygon"
        assert all(part.exterior.is_ccw for part in geometry.geoms)
        reference, centre = reference_footprint(transform, "EPSG:32660", row["col"], row["row"], 512, 512)
        assert iou(unwrapped(geometry, centre), reference) >= 0.99
        check_window(geometry, transform, "EPSG:32660", row["col"], row["row"], 512, 512, step=8)
        west, south, east, north = (row["bbox"][k] for k in ("xmin", "ymin", "xmax", "ymax"))
        lons = np.asarray(reference.exterior.xy[0])
        crosses = lons.min() < 180 < lons.max()
        # cut at ±180°: the coordinates' range, −180…180, never west > east (readers drop that)
        if crosses:
            assert (west, east) == (-180, 180) and len(geometry.geoms) == 2
        else:
            assert west == pytest.approx(lons.min() if lons.min() < 180 else lons.min() - 360, abs=1e-6)
            assert east == pytest.approx(lons.max() - 360 if lons.max() > 180 else lons.max(), abs=1e-6)
        assert (south, north) == pytest.approx((reference.bounds[1], reference.bounds[3]), abs=1e-6)
    assert any(b["xmin"] == -180 for b in chips["bbox"].to_pylist())  # the hard case was met
    crossing = [shapely.from_wkb(g) for g in chips["geometry"].to_pylist()]
    for row in patches.to_pylist():
        patch = shapely.from_wkb(row["geometry"])
        assert patch.is_valid
        chip = crossing[[r["col"] for r in chips.to_pylist()].index(row["chip_col"])]
        assert chip.buffer(1e-9).covers(patch)
    assert_valid_geoparquet(result.output, result.patches)


def assert_valid_geoparquet(*paths: Path) -> None:
    """geoparquet-validator (the dev extra's) passes each file: the bbox rule keeps it conformant."""
    for path in paths:
        validator = Path(sys.executable).parent / "geoparquet-validator"
        checked = subprocess.run([str(validator), "check", str(path)], capture_output=True, text=True, timeout=120,
                                 check=False)  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr


def readme_duckdb_where() -> str:
    """The WHERE clause of the README's DuckDB query, its numbers made placeholders: the query is
    tested as the README writes it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sql = text.split("```sql\n", 1)[1].split("```", 1)[0]
    where = next(line for line in sql.splitlines() if line.startswith("WHERE "))
    for number, name in (("103.76", "{e}"), ("103.70", "{w}"), ("17.93", "{n}"), ("17.88", "{s}")):
        assert where.count(number) == 1, where
        where = where.replace(number, name)
    return where.rstrip(";")


def test_bbox_filters_as_readers_apply_them_never_miss_a_row_across_180_or_at_a_pole(s2_embedder, tmp_path):
    """Rows cut at 180° had RFC 7946 bboxes (xmin > xmax): GeoPandas' ``read_parquet(bbox=)``, the
    README's DuckDB query and a pyarrow filter on the bbox struct all test ``xmin <= east AND xmax
    >= west`` and dropped every such row. For boxes on both sides of 180° and at the south pole,
    each now returns every row whose geometry meets the box, and nothing for a box elsewhere; the
    row groups' statistics do not let a reader skip them either."""
    import geopandas
    import pyarrow.dataset as ds

    am, _ = am_scene(tmp_path)
    polar = write_stack(tmp_path / "polar.tif", s2_cube(1024, 1024), Affine(10, 0, -1920, 0, -10, 2000), "EPSG:3031",
                        S2, tags={"date": "2021-01-15"})  # fmt: skip
    files = []
    for scene in (am, polar):
        result = s2_embedder.embed_scene_to(scene, tmp_path / f"{scene.stem}.parquet", RunOptions(patch_embeddings=True))
        files += [result.output, result.patches]
    boxes = [
        (179.99, 64.9, 179.995, 65.1), (-179.995, 64.9, -179.99, 65.1),  # either side of 180° at 65° N
        (179.9, 64.0, 180.0, 66.0), (-180.0, 64.0, -179.9, 66.0),  # up to 180° from either side
        (-10.0, -90.0, 10.0, -89.99), (175.0, -89.99, 180.0, -89.9), (-180.0, -89.99, -175.0, -89.9),  # the pole
        (10.0, 64.9, 11.0, 65.1), (179.99, 10.0, 179.995, 11.0), (60.0, -80.0, 70.0, -70.0),  # nothing there
    ]  # fmt: skip
    where = readme_duckdb_where()
    met = 0
    for path in files:
        table = pq.read_table(path)
        names = ["row", "col"] + (["chip_row", "chip_col"] if "chip_row" in table.column_names else [])
        keys = list(zip(*(table[name].to_pylist() for name in names), strict=True))
        geometries = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
        boxes_of = dict(zip(keys, table["bbox"].to_pylist(), strict=True))
        stats = pq.ParquetFile(path).metadata.row_group(0)
        columns = {stats.column(i).path_in_schema: stats.column(i).statistics for i in range(stats.num_columns)}
        for west, south, east, north in boxes:
            truth = {k for k, g in zip(keys, geometries, strict=True) if g.intersects(shapely.box(west, south, east, north))}
            met += bool(truth)
            frame = geopandas.read_parquet(path, bbox=(west, south, east, north))
            found = set(zip(*(frame[name].tolist() for name in names), strict=True))
            assert truth <= found, (path.name, (west, south, east, north), len(truth - found))
            query = f"SELECT * FROM '{path}' " + where.format(w=west, s=south, e=east, n=north)
            assert len(duckdb.sql(query).fetchall()) == len(frame), (path.name, (west, south, east, north))
            condition = ((ds.field("bbox", "xmin") <= east) & (ds.field("bbox", "xmax") >= west)
                         & (ds.field("bbox", "ymin") <= north) & (ds.field("bbox", "ymax") >= south))  # fmt: skip
            assert ds.dataset(path).to_table(filter=condition).num_rows == len(frame)
            if truth:  # a reader skipping row groups by their statistics keeps this one
                assert columns["bbox.xmin"].min <= east and columns["bbox.xmax"].max >= west
                assert columns["bbox.ymin"].min <= north and columns["bbox.ymax"].max >= south
            if (west, south) in ((10.0, 64.9), (179.99, 10.0), (60.0, -80.0)):
                # where the scenes are not: nothing meets the box, and all a filter may give are the
                # rows cut at 180° at its latitudes (bbox −180…180), that the geometry test drops
                assert not truth and all((boxes_of[k]["xmin"], boxes_of[k]["xmax"]) == (-180, 180) for k in found)
                assert len(frame) == 0 or (west, south) == (10.0, 64.9)
    assert met == 2 * 4 + 2 * 3  # the hard cases were met: 4 boxes at 180° (am), 3 at the pole (polar)


@pytest.mark.parametrize(
    "crs, transform",
    [
        # the pole inside the first chip, the 180° meridian (x = 0, y < 0) along patch edges
        ("EPSG:3031", Affine(10, 0, -1920, 0, -10, 2000)),
        # the pole at the corner of all four chips, the 180° meridian a diagonal through one
        ("EPSG:3413", Affine(10, 0, -5120, 0, -10, 5120)),
    ],
)
def test_a_polar_scene_holding_the_pole_writes_valid_footprints_that_hold_their_pixels(s2_embedder, tmp_path, crs, transform):
    """A polar stereographic scene with the pole in it, as users' files are: chips with a corner at
    the pole or an edge on 180° were self-intersecting, patches along 180° slivers, and pixel
    centres near the pole fell outside their chip. Every row now passes pyproj's own check (its
    pixel centres in, the pixels beyond it out, its area in the polar plane, the pole where it is
    held) and the files pass geoparquet-validator."""
    scene = write_stack(tmp_path / "polar.tif", s2_cube(1024, 1024), transform, crs, S2, tags={"date": "2021-01-15"})
    result = s2_embedder.embed_scene_to(scene, tmp_path / "polar.parquet", RunOptions(patch_embeddings=True))
    chips, patches = pq.read_table(result.output), pq.read_table(result.patches)
    assert json.loads(chips.schema.metadata[b"geo"])["columns"]["geometry"]["geometry_types"] == ["MultiPolygon"]
    assert "holds a pole" in preprocessing(chips)["footprint"]
    held = 0
    for row in chips.to_pylist():
        geometry = shapely.from_wkb(row["geometry"])
        held += check_window(geometry, transform, crs, row["col"], row["row"], 512, 512, step=8)
    assert held == (1 if crs == "EPSG:3031" else 0)
    assert patches.num_rows == 4 * 256
    for row in patches.to_pylist():
        check_window(shapely.from_wkb(row["geometry"]), transform, crs, row["col"], row["row"], 32, 32, step=8)
    assert_valid_geoparquet(result.output, result.patches)


@pytest.mark.parametrize(
    "name, matrix",
    [
        ("south-up", Affine(10, 0, 0, 0, 10, 0)),
        ("flipped", Affine(-10, 0, 0, 0, -10, 0)),
        ("rotated 30°", Affine.rotation(30) @ Affine.scale(10, -10)),
        ("sheared", Affine.shear(15, 5) @ Affine.scale(10, -10)),
    ],
)
def test_every_affine_geotransform_gives_the_footprint_its_corners_give(s2_embedder, tmp_path, name, matrix):
    """South-up was a GEOSException traceback after every chip was read; rotated and sheared grids
    were written as axis-aligned boxes."""
    x, y = utm(103.75, 17.9, 32648)
    transform = Affine.translation(x, y) @ matrix
    scene = write_stack(tmp_path / "s.tif", s2_cube(700, 900), transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    result = s2_embedder.embed_scene_to(scene, tmp_path / "s.parquet", RunOptions(patch_embeddings=True))
    chips, patches = pq.read_table(result.output).to_pylist(), pq.read_table(result.patches).to_pylist()
    assert len(chips) == 4
    by_origin = {}
    for row in chips:
        geometry = shapely.from_wkb(row["geometry"])
        assert geometry.is_valid and geometry.geom_type == "Polygon" and geometry.exterior.is_ccw
        reference, _ = reference_footprint(transform, "EPSG:32648", row["col"], row["row"], 512, 512)
        assert iou(geometry, reference) >= 0.99, name
        by_origin[(row["row"], row["col"])] = geometry
    for row in patches:
        assert by_origin[(row["chip_row"], row["chip_col"])].buffer(1e-9).covers(shapely.from_wkb(row["geometry"]))


def test_a_file_without_a_geotransform_is_refused_before_any_read(tmp_path):
    """A CRS with GDAL's identity geotransform was warned as '1 m pixels', read, then crashed."""
    scene = write_stack(tmp_path / "nogt.tif", s2_cube(600, 600), Affine.identity(), "EPSG:32648", S2,
                        tags={"date": "2020-02-23"})  # fmt: skip
    result = clay_run(scene, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "no geotransform" in lines[-1] and "gdalwarp" in lines[-1] and len(lines) == 2  # the engine line, then it
    with pytest.raises(SceneError, match="no geotransform"):  # at opening, which reads no pixel
        read_header(scene)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_grid_its_crs_cannot_place_is_one_line_and_keep_going_finishes_the_others(s2_embedder, tmp_path):
    """Any exception inside one scene is that scene's one line; the other scenes are embedded."""
    good = write_stack(tmp_path / "good.tif", s2_cube(512, 512), Affine(10, 0, 362600, 0, -10, 1987080), "EPSG:32648", S2,
                       tags={"date": "2020-02-23"})  # fmt: skip
    # an orthographic CRS (the Earth as seen from space) and a grid reaching past the disk's edge
    ortho = "+proj=ortho +lat_0=40 +lon_0=10 +datum=WGS84 +units=m +no_defs"
    bad = write_stack(tmp_path / "bad.tif", s2_cube(512, 512), Affine(100, 0, 6.35e6, 0, -100, 2e4), ortho, S2,
                      tags={"date": "2020-02-23"})  # fmt: skip
    result = clay_run(bad, good, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--keep-going")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bad: " in result.stderr and "fall outside the area" in result.stderr
    assert (tmp_path / "out" / "good.parquet").is_file() and not (tmp_path / "out" / "bad.parquet").exists()
    with pytest.raises(SceneError, match="outside the area"):
        s2_embedder.embed_scene(bad)


def test_an_unexpected_error_in_one_scene_fails_that_scene_only(s2_embedder, tmp_path, monkeypatch):
    """Errors of kinds nobody foresaw (here injected: one in a chip read, one while making rows)."""
    import clay.runtime.pipeline as pipeline

    scenes = [write_stack(tmp_path / f"s{k}.tif", s2_cube(512, 512, k), Affine(10, 0, 362600, 0, -10, 1987080),
                          "EPSG:32648", S2, tags={"date": "2020-02-23"}) for k in range(3)]  # fmt: skip
    real_read, real_rows = pipeline.read_chip, pipeline.write_chip_rows

    def read(scene, chip, out=None):
        if scene.name == "s0":
            raise ZeroDivisionError("injected")
        return real_read(scene, chip, out)

    def rows(output, scene, *args, **kwargs):
        if scene.name == "s1":
            raise shapely.errors.GEOSException("injected")
        return real_rows(output, scene, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_chip", read)
    monkeypatch.setattr(pipeline, "write_chip_rows", rows)
    options = RunOptions(keep_going=True)
    results = list(s2_embedder.embed_scenes([(p, pipeline.ScenePaths(tmp_path / f"{p.stem}.parquet")) for p in scenes],
                                            options))  # fmt: skip
    assert [r.error is None for r in results] == [False, False, True]
    assert "ZeroDivisionError: injected" in results[0].error and "GEOSException: injected" in results[1].error
    assert all("\n" not in r.error for r in results[:2])
    assert not (tmp_path / "s0.parquet").exists() and not (tmp_path / "s1.parquet").exists()
    assert pq.read_table(tmp_path / "s2.parquet").num_rows == 1


# --- masks and nodata ---------------------------------------------------------------------------------


def test_a_gdal_mask_band_is_nodata_and_equals_the_same_scene_with_nodata_values(s2_embedder, tmp_path):
    """uint16 with an internal PER_DATASET mask, no nodata value, filler 7 under the mask: the masked
    chips were embedded with nodata_fraction 0.0."""
    cube = s2_cube(1024, 1024)
    valid = np.ones((1024, 1024), bool)
    valid[:, 700:] = False  # the right chips are 324/512 masked, the left ones not at all
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    masked = write_stack(tmp_path / "masked.tif", np.where(valid, cube, 7), transform, "EPSG:32648", S2,
                         tags={"date": "2020-02-23"}, dataset_mask=valid)  # fmt: skip
    zeros = write_stack(tmp_path / "zeros.tif", np.where(valid, cube, 0), transform, "EPSG:32648", S2,
                        tags={"date": "2020-02-23"}, nodata=0)  # fmt: skip
    alpha = write_stack(tmp_path / "alpha.tif", np.where(valid, cube, 7), transform, "EPSG:32648", S2,
                        tags={"date": "2020-02-23"}, alpha=valid)  # fmt: skip
    options = RunOptions(max_nodata=0.7)
    tables = {p.stem: s2_embedder.embed_scene(p, options) for p in (masked, zeros, alpha)}
    right = (1024 - 700) / 512
    expected = {(0, 0): 0.0, (0, 512): right, (512, 0): 0.0, (512, 512): right}
    for name, table in tables.items():
        fractions = {(r["row"], r["col"]): r["nodata_fraction"] for r in table.to_pylist()}
        assert fractions == pytest.approx(expected), name
        notes = list(preprocessing(table)["invalid_pixels"])
        assert notes == {"masked": ["GDAL mask band (per-band, per-dataset or alpha)"],
                         "zeros": ["nodata value 0; 0 (L2A NO_DATA)"], "alpha": ["alpha band 11 of alpha.tif"]}[name]
    assert cosines(embeddings(tables["masked"]), embeddings(tables["zeros"])).min() >= 0.9999
    assert cosines(embeddings(tables["alpha"]), embeddings(tables["zeros"])).min() >= 0.9999
    fully = write_stack(tmp_path / "fully.tif", np.full_like(cube[:, :512, :512], 7), transform, "EPSG:32648", S2,
                        tags={"date": "2020-02-23"}, dataset_mask=np.zeros((512, 512), bool))  # fmt: skip
    with pytest.raises(SceneError, match="every chip has more than 50% nodata"):
        s2_embedder.embed_scene(fully)


def test_a_per_band_mask_marks_only_its_band_and_equals_nan_in_that_band(s2_embedder, tmp_path):
    """A per-band GDAL mask (GeoTIFF's internal masks are per dataset, so users meet per-band ones in
    VRTs and .msk files): band B08 masked on the right, the other bands valid. The chip's fraction is
    the share of pixels where any band is invalid, and the embedding equals float32 NaN there."""
    cube = s2_cube(1024, 1024)
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    write_stack(tmp_path / "base.tif", cube, transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    valid = np.ones((1024, 1024), bool)
    valid[:, 700:] = False
    with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", width=1024, height=1024, count=1, dtype="uint8",
                       crs="EPSG:32648", transform=transform) as dst:  # fmt: skip
        dst.write(np.where(valid, 255, 0).astype(np.uint8), 1)
    masked_band = S2.index("B08") + 1
    mask = ('<MaskBand><VRTRasterBand dataType="Byte"><SimpleSource><SourceFilename relativeToVRT="1">mask.tif'
            "</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></MaskBand>")
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{i}"><Description>{name}</Description><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">base.tif</SourceFilename><SourceBand>{i}</SourceBand></SimpleSource>'
        f"{mask if i == masked_band else ''}</VRTRasterBand>"
        for i, name in enumerate(S2, start=1)
    )
    vrt = tmp_path / "perband.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="1024" rasterYSize="1024"><SRS>EPSG:32648</SRS>'
                   f"<GeoTransform>362600, 10, 0, 1987080, 0, -10</GeoTransform>"
                   f'<Metadata><MDI key="date">2020-02-23</MDI></Metadata>{bands}</VRTDataset>')  # fmt: skip
    with rasterio.open(vrt) as src:  # the recipe is what it claims: a mask on B08 alone, not per dataset
        assert src.mask_flag_enums[masked_band - 1] == [] and src.mask_flag_enums[0] == [MaskFlags.all_valid]
    nan = cube.astype(np.float32)
    nan[masked_band - 1][~valid] = np.nan
    as_nan = write_stack(tmp_path / "nan.tif", nan, transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    options = RunOptions(max_nodata=0.7)
    tables = {"vrt": s2_embedder.embed_scene(vrt, options), "nan": s2_embedder.embed_scene(as_nan, options)}
    right = (1024 - 700) / 512
    for name, table in tables.items():
        fractions = {(r["row"], r["col"]): r["nodata_fraction"] for r in table.to_pylist()}
        assert fractions == pytest.approx({(0, 0): 0.0, (0, 512): right, (512, 0): 0.0, (512, 512): right}), name
    assert preprocessing(tables["vrt"])["invalid_pixels"]["GDAL mask band (per-band, per-dataset or alpha)"] == ["B08"]
    assert cosines(embeddings(tables["vrt"]), embeddings(tables["nan"])).min() >= 0.9999


def test_what_a_warp_cannot_fill_is_nodata_not_zero_elevation(s2_dem_engine, tmp_path):
    """A DEM in EPSG:4326 covering the left half of an S2 scene: the right half was read as 0 m."""
    x0, y0 = 362600.0, 1987080.0
    transform = Affine(10, 0, x0, 0, -10, y0)
    (tmp_path / "scene").mkdir()
    write_stack(tmp_path / "scene" / "s2.tif", s2_cube(1024, 1024), transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    to_lonlat = Transformer.from_crs("EPSG:32648", "EPSG:4326", always_xy=True)
    west, north = to_lonlat.transform(x0 - 300, y0 + 300)
    middle, south = to_lonlat.transform(x0 + 5120, y0 - 10540)
    step = 1 / 3600
    width, height = int((middle - west) / step), int((north - south) / step)
    dem = 100 + np.zeros((1, height, width), np.float32)
    write_stack(tmp_path / "scene" / "DEM.tif", dem, Affine(step, 0, west, 0, -step, north), "EPSG:4326", [None])
    with ClayEmbedder(s2_dem_engine) as embedder:
        table = embedder.embed_scene(tmp_path / "scene", RunOptions(max_nodata=1.0)).to_pylist()
    # the DEM ends at the scene's middle, ±1 arc-second: left chips whole, right chips empty
    fractions = {(r["row"], r["col"]): r["nodata_fraction"] for r in table}
    assert fractions[(0, 0)] == pytest.approx(0.0, abs=0.01) and fractions[(512, 0)] == pytest.approx(0.0, abs=0.01)
    assert fractions[(0, 512)] == pytest.approx(1.0, abs=0.01) and fractions[(512, 512)] == pytest.approx(1.0, abs=0.01)


def assert_b12_warped_whole(embedder, folder: Path, whole: Path) -> None:
    """The folder (B12 in another CRS than the other bands) reads whole: B12 is the one band warped
    (by the engine's method, issue 35), no pixel is nodata, and the embeddings are those of the same
    bands written in one stack on the scene's grid."""
    warped = embedder.embed_scene(folder, RunOptions(max_nodata=1.0))
    plain = embedder.embed_scene(whole, RunOptions(max_nodata=1.0))
    resampling = preprocessing(warped)["resampling"]
    assert {k: v for k, v in resampling.items() if k.startswith(("warped", "resampled"))} == {
        f"warped {resampling['method']}": ["B12"]}
    assert warped["nodata_fraction"].to_pylist() == [0.0, 0.0]
    assert cosines(embeddings(warped), embeddings(plain)).min() >= 0.9999


def test_a_band_in_lonlat_past_180_is_warped_whole_onto_a_scene_across_180(s2_embedder, tmp_path):
    """Nine S2 bands in EPSG:32660 across 180° at 65° N and B12 in EPSG:4326 from 179.8° to 180.2°
    (a geographic grid past 180°, as GDAL writes one there): GDAL's warper maps the scene's pixels
    to longitudes in [-180, 180] and found no B12 pixel east of 180° (and only some west of it):
    chips counted mostly nodata and filled with the band mean, exit 0. The same scene with B12
    written in the scene's own grid (the same constant value) gives the same embeddings."""
    x, y = utm(180.0, 65.0, 32660)
    transform = Affine(10, 0, x - 5120, 0, -10, y)
    cube = s2_cube(512, 1024)
    cube[9] = 1800  # B12: a constant, so a bilinear warp of it is exact wherever it has data
    (tmp_path / "scene").mkdir()
    write_stack(tmp_path / "scene" / "s2.tif", cube[:9], transform, "EPSG:32660", S2[:9], tags={"date": "2021-07-01"})
    b12 = np.full((1, 800, 2000), 1800, np.uint16)  # 2e-4° × 1e-4°: 179.8…180.2° E, 65.02…64.94° N
    write_stack(tmp_path / "scene" / "b12.tif", b12, Affine(2e-4, 0, 179.8, 0, -1e-4, 65.02), "EPSG:4326", ["B12"],
                tags={"date": "2021-07-01"})  # fmt: skip
    # the scene's grid lies inside the B12 grid (pyproj alone): every pixel has B12 data
    lons, lats = Transformer.from_crs("EPSG:32660", "EPSG:4326", always_xy=True).transform(
        *(transform @ (np.array([0, 1024, 1024, 0]), np.array([0, 0, 512, 512]))))
    lons = np.asarray(lons) % 360
    assert 179.8 < lons.min() and lons.max() < 180.2 and 64.94 < min(lats) and max(lats) < 65.02
    whole = write_stack(tmp_path / "whole.tif", cube, transform, "EPSG:32660", S2, tags={"date": "2021-07-01"})
    assert_b12_warped_whole(s2_embedder, tmp_path / "scene", whole)


def test_a_band_across_180_overlaps_a_lonlat_scene_past_180(s2_embedder, tmp_path):
    """Nine S2 bands in EPSG:4326 from 179.96° to 180.06° E (the scene's grid, the finest) and B12
    in EPSG:32660 across 180° covering it: the overlap check took the B12 file's lon/lat bounds
    across 180° (west > east) as the longitudes between them, the rest of the globe, and refused
    the scene ("do not overlap"). The same scene with B12 in the lon/lat stack (a constant value,
    exact through a bilinear warp) gives the same embeddings."""
    transform = Affine(1e-4, 0, 179.96, 0, -5e-5, 65.0)
    cube = s2_cube(512, 1024)
    cube[9] = 1800
    (tmp_path / "scene").mkdir()
    write_stack(tmp_path / "scene" / "s2.tif", cube[:9], transform, "EPSG:4326", S2[:9], tags={"date": "2021-07-01"})
    x, y = utm(179.9, 65.01, 32660)  # 24 × 6 km at 20 m: 179.9…180.4° E, 65.01…64.95° N
    write_stack(tmp_path / "scene" / "b12.tif", np.full((1, 300, 1200), 1800, np.uint16), Affine(20, 0, x, 0, -20, y),
                "EPSG:32660", ["B12"], tags={"date": "2021-07-01"})  # fmt: skip
    whole = write_stack(tmp_path / "whole.tif", cube, transform, "EPSG:4326", S2, tags={"date": "2021-07-01"})
    assert_b12_warped_whole(s2_embedder, tmp_path / "scene", whole)


# --- units and scale ----------------------------------------------------------------------------------


def sar_db(height: int, width: int, seed: int = 0) -> np.ndarray:
    """VH, VV in dB (about −21…−8) from the generator's linear gamma0."""
    linear = make_scene_array(height, width, seed)[10:12]
    return (10 * np.log10(linear)).astype(np.float32)


def test_sar_in_db_with_nodata_zeros_is_detected_and_equals_linear_power(sar_dem_engine, tmp_path):
    """S1 VV/VH in dB over 40 % of a tile, 0 elsewhere, nodata = 0, no unit metadata: the zeros counted
    as non-negative samples, dB was not detected and went to the engine as linear power."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    db = sar_db(1024, 1024)
    covered = np.zeros((1024, 1024), bool)
    covered[:, :410] = True
    dem = make_scene_array(1024, 1024)[12:]
    cube_db = np.concatenate([np.where(covered, db, 0), dem])
    cube_linear = np.concatenate([np.where(covered, 10 ** (db / 10), 0), dem])
    write_stack(tmp_path / "db.tif", cube_db, transform, "EPSG:32648", ["VH", "VV", "DEM"], nodata=0, tags={"date": "2020-06-07"})
    write_stack(tmp_path / "lin.tif", cube_linear, transform, "EPSG:32648", ["VH", "VV", "DEM"], nodata=0,
                tags={"date": "2020-06-07"})  # fmt: skip
    refused = clay_run(tmp_path / "db.tif", "--engine", sar_dem_engine, "--out", tmp_path / "out")
    assert refused.returncode == 1 and "mostly negative, so it is in dB" in refused.stderr and "Traceback" not in refused.stderr
    with ClayEmbedder(sar_dem_engine) as embedder:
        as_db = embedder.embed_scene(tmp_path / "db.tif", RunOptions(sar_units="db", max_nodata=0.7))
        linear = embedder.embed_scene(tmp_path / "lin.tif", RunOptions(max_nodata=0.7))
    assert as_db.num_rows == linear.num_rows == 2  # the left chips; the right ones are all nodata
    assert cosines(embeddings(as_db), embeddings(linear)).min() >= 0.9999
    assert as_db["nodata_fraction"].to_pylist() == pytest.approx([1 - 410 / 512] * 2)


def test_sar_units_are_judged_on_valid_values_only_and_opening_reads_no_pixel(sar_dem_engine, tmp_path, monkeypatch):
    """The old unit check sampled each SAR band at opening (0.15 s a band a scene, before the first
    chip), counting nodata zeros as linear values. Now opening reads no pixel, and every chip's
    valid values are judged as they are read: a band with no valid value says nothing of its units
    and its chips are nodata."""
    import rasterio

    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    cube = np.concatenate([np.zeros((2, 512, 512), np.float32), np.full((1, 512, 512), 100, np.float32)])
    empty = write_stack(tmp_path / "empty.tif", cube, transform, "EPSG:32648", ["VH", "VV", "DEM"], nodata=0,
                        tags={"date": "2020-06-07"})  # fmt: skip
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.scenes.scene import open_scene

    reads = []
    real_read = rasterio.io.DatasetReader.read
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", lambda self, *a, **k: reads.append(1) or real_read(self, *a, **k))
    open_scene(empty, read_engine_metadata(sar_dem_engine))
    assert reads == []
    monkeypatch.undo()
    result = clay_run(empty, "--engine", sar_dem_engine, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "every chip has more than 50% nodata" in result.stderr.strip().splitlines()[-1]


def test_gdal_scale_and_offset_give_the_same_embeddings_as_plain_values_and_are_recorded(sar_dem_engine, tmp_path):
    """A DEM stored as int16 decimetres with scale 0.1, and one in feet, against plain metres."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    cube = make_scene_array(512, 512)
    sar, metres = cube[10:12], cube[12]
    plain = write_stack(tmp_path / "plain.tif", np.concatenate([sar, metres[None]]), transform, "EPSG:32648",
                        ["VH", "VV", "DEM"], units=["linear", "linear", "m"], tags={"date": "2020-06-07"})  # fmt: skip
    decimetres = tmp_path / "dm"
    decimetres.mkdir()
    write_stack(decimetres / "VH.tif", sar[:1], transform, "EPSG:32648", [None], units=["linear"], tags={"date": "2020-06-07"})
    write_stack(decimetres / "VV.tif", sar[1:], transform, "EPSG:32648", [None], units=["linear"], tags={"date": "2020-06-07"})
    write_stack(decimetres / "DEM.tif", np.rint(metres * 10)[None], transform, "EPSG:32648", [None], dtype="int16",
                scales=[0.1], offsets=[0.0], tags={"date": "2020-06-07"})  # fmt: skip
    feet = tmp_path / "feet.tif"
    write_stack(feet, np.concatenate([sar, (metres / 0.3048)[None]]), transform, "EPSG:32648", ["VH", "VV", "DEM"],
                units=["linear", "linear", "ft"], tags={"date": "2020-06-07"})  # fmt: skip
    with ClayEmbedder(sar_dem_engine) as embedder:
        reference = embedder.embed_scene(plain)
        tables = {scene.name: embedder.embed_scene(scene) for scene in (decimetres, feet)}
    for name, table in tables.items():
        assert table.num_rows == 1 and cosines(embeddings(table), embeddings(reference)).min() >= 0.9999, name
    assert preprocessing(tables["dm"])["units"]["GDAL scale 0.1 offset 0"] == ["DEM"]
    assert preprocessing(tables["feet.tif"])["units"]["unit 'ft': * 0.3048 to metres"] == ["DEM"]


def test_the_s2_offset_is_taken_from_each_scenes_own_metadata_in_a_mixed_run(s2_embedder, tmp_path):
    """One --s2-offset for the whole run subtracted 1000 from a scene declaring offset 0 too (cosine
    0.72–0.77 against its correct run). Each convention users meet, in one run, against the same
    harmonised DNs written plainly."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    harmonised = s2_cube(512, 512)
    day = {"date": "2023-05-01"}
    scenes = {
        # raw L2A of baseline 04.00+, as GDAL declares it (scale 1e-4, offset -0.1): +1000 in the DNs
        "raw_scaled": (harmonised + 1000, dict(scales=[1e-4] * 10, offsets=[-0.1] * 10)),
        # a pre-2022 product declaring offset 0
        "old_scaled": (harmonised, dict(scales=[1e-4] * 10, offsets=[0.0] * 10)),
        # an archive that removed the offset but still declares -0.1 (Earth Search's double-correction trap)
        "harmonised_tagged": (harmonised, dict(scales=[1e-4] * 10, offsets=[-0.1] * 10, tags={"BOA_OFFSET_APPLIED": "true"})),
        # the product's own BOA_ADD_OFFSET, and a processing baseline in the product name
        "boa_tag": (harmonised + 1000, dict(tags={"BOA_ADD_OFFSET_B02": "-1000", "BOA_ADD_OFFSET": "-1000"})),
        "S2B_MSIL2A_20230501T033539_N0509_R061_T48QUE_20230501T071412": (harmonised + 1000, {}),
    }
    plain = write_stack(tmp_path / "plain.tif", harmonised, transform, "EPSG:32648", S2, tags=day)
    for name, (cube, extra) in scenes.items():
        tags = {**day, **extra.pop("tags", {})}
        write_stack(tmp_path / f"{name}.tif", cube, transform, "EPSG:32648", S2, tags=tags, **extra)
    reference = embeddings(s2_embedder.embed_scene(plain))
    (tmp_path / "out").mkdir()
    results = list(s2_embedder.embed_scenes(
        [(tmp_path / f"{name}.tif", pq_paths(tmp_path, name)) for name in scenes], RunOptions()))  # fmt: skip
    for name, result in zip(scenes, results):
        table = pq.read_table(result.output)
        assert cosines(embeddings(table), reference).min() >= 0.9999, name
    notes = {name: list(preprocessing(pq.read_table(r.output))["units"]) for name, r in zip(scenes, results)}
    assert notes["raw_scaled"] == ["GDAL scale 0.0001 offset -0.1: DN * 1 -1000"]
    assert notes["old_scaled"] == ["GDAL scale 0.0001 offset 0: DN * 1 +0"]
    assert notes["harmonised_tagged"][0].startswith("offset already removed")
    assert notes["boa_tag"] == ["BOA_ADD_OFFSET -1000: DN -1000"]
    assert notes["S2B_MSIL2A_20230501T033539_N0509_R061_T48QUE_20230501T071412"] == ["processing baseline 05.09: DN -1000"]
    # --s2-offset stays, as an override
    forced = s2_embedder.embed_scene(tmp_path / "raw_scaled.tif", RunOptions(s2_offset=0))
    assert cosines(embeddings(forced), reference).min() < 0.999
    assert list(preprocessing(forced)["units"]) == ["GDAL scale 0.0001; --s2-offset 0: DNs taken as harmonised"]


def pq_paths(folder: Path, name: str):
    from clay.runtime.outputs.publish import ScenePaths

    return ScenePaths(folder / "out" / f"{name}.parquet")


def test_an_undeclared_s2_scene_from_the_offset_era_is_warned_about(tmp_path):
    write_stack(tmp_path / "s.tif", s2_cube(512, 512), Affine(10, 0, 362600, 0, -10, 1987080), "EPSG:32648", S2,
                tags={"date": "2023-05-01"})  # fmt: skip
    result = clay_run(tmp_path / "s.tif", "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0
    said = [line for line in result.stderr.splitlines() if "taken as harmonised; pass --s2-offset 1000" in line]
    assert len(said) == 1 and "warning:" in said[0]  # once for the scene, not once per band


def test_s2_as_float_reflectance_is_refused_unless_the_file_says_so(s2_embedder, tmp_path):
    """S2 already converted to reflectance (0…0.6) was embedded silently, every chip alike."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    dn = s2_cube(512, 512)
    reflectance = (dn / 10_000).astype(np.float32)
    write_stack(tmp_path / "refl.tif", reflectance, transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    result = clay_run(tmp_path / "refl.tif", "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "reflectance, not the L2A digital numbers (reflectance × 10000)" in result.stderr.strip().splitlines()[-1]
    declared = write_stack(tmp_path / "declared.tif", reflectance, transform, "EPSG:32648", S2,
                           units=["reflectance"] * 10, tags={"date": "2020-02-23"})  # fmt: skip
    plain = write_stack(tmp_path / "plain.tif", dn, transform, "EPSG:32648", S2, tags={"date": "2020-02-23"})
    assert cosines(embeddings(s2_embedder.embed_scene(declared)), embeddings(s2_embedder.embed_scene(plain))).min() >= 0.9999


# --- the scene grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dem_folder", ["aaa", "zzz"])
def test_the_grid_is_the_finest_optical_grid_whatever_the_files_are_called(s2_dem_engine, tmp_path, dem_folder):
    """Ten S2 bands at 10 m in EPSG:32648 and a DEM at 1″ in EPSG:4326: the DEM's 0.000278 (degrees)
    beat 10 (metres) and the scene was regridded to ~30 m in EPSG:4326, 1 chip instead of 4."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    (tmp_path / "s2").mkdir()
    cube = s2_cube(1024, 1024)
    for band, plane in zip(S2, cube):
        write_stack(tmp_path / "s2" / f"{band}.tif", plane[None], transform, "EPSG:32648", [None], tags={"date": "2020-02-23"})
    (tmp_path / dem_folder).mkdir()
    west, north = Transformer.from_crs("EPSG:32648", "EPSG:4326", always_xy=True).transform(362000, 1987700)
    step = 1 / 3600
    write_stack(tmp_path / dem_folder / "DEM.tif", np.full((1, 420, 420), 150, np.float32),
                Affine(step, 0, west, 0, -step, north), "EPSG:4326", [None])  # fmt: skip
    with ClayEmbedder(s2_dem_engine) as embedder:
        table = embedder.embed_scene(tmp_path)
    assert table.num_rows == 4
    assert table.schema.metadata[b"clay:scene_crs"] == b"EPSG:32648"
    grid = preprocessing(table)["grid"]
    assert grid["file"] == "B02.tif" and grid["pixel_size_m"] == pytest.approx(10, abs=0.1)
    assert grid["rule"] == "finest file holding Sentinel-2 bands"


# --- dates --------------------------------------------------------------------------------------------


def test_the_date_is_the_sensing_time_not_the_tiff_processing_time(s2_embedder, tmp_path):
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    tagged = write_stack(tmp_path / "tagged.tif", s2_cube(512, 512), transform, "EPSG:32648", S2,
                         imagery={"ACQUISITIONDATETIME": "2020-02-23T03:37:01Z"},
                         tags={"TIFFTAG_DATETIME": "2024:05:01 12:00:00"})  # fmt: skip
    table = s2_embedder.embed_scene(tagged)
    assert table["date"].to_pylist() == [date(2020, 2, 23)]
    assert preprocessing(table)["date"]["source"] == "tag IMAGERY ACQUISITIONDATETIME of tagged.tif"
    product = tmp_path / "S2A_MSIL2A_20200223T033701_N0214_R018_T48QUE_20200223T074314.SAFE"
    product.mkdir()
    write_stack(product / "scene.tif", s2_cube(512, 512), transform, "EPSG:32648", S2,
                tags={"TIFFTAG_DATETIME": "2024:05:01 12:00:00"})  # fmt: skip
    assert s2_embedder.embed_scene(product / "scene.tif")["date"].to_pylist() == [date(2020, 2, 23)]
    only_tiff = write_stack(tmp_path / "only.tif", s2_cube(512, 512), transform, "EPSG:32648", S2,
                            tags={"TIFFTAG_DATETIME": "2024:05:01 12:00:00"})  # fmt: skip
    result = clay_run(only_tiff, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0 and "date 2024-05-01 from the TIFF DateTime tag, which is often the processing time" in result.stderr


def test_files_of_one_scene_that_disagree_on_the_date_follow_the_documented_rule(s2_dem_engine, tmp_path):
    """S2 sensed 2020-06-04, its DEM tagged 2015-01-01: the S2 date (earliest engine band) wins and
    both are recorded."""
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    for band, plane in zip(S2, s2_cube(512, 512)):
        write_stack(tmp_path / f"{band}.tif", plane[None], transform, "EPSG:32648", [None], tags={"date": "2020-06-04"})
    write_stack(tmp_path / "DEM.tif", np.full((1, 512, 512), 50, np.float32), transform, "EPSG:32648", [None],
                tags={"date": "2015-01-01"})  # fmt: skip
    with ClayEmbedder(s2_dem_engine) as embedder:
        table = embedder.embed_scene(tmp_path)
    assert table["date"].to_pylist() == [date(2020, 6, 4)]
    note = preprocessing(table)["date"]
    assert note["source"] == "tag date of B02.tif"
    assert note["files"]["DEM.tif"].startswith("2015-01-01") and note["files"]["B02.tif"].startswith("2020-06-04")


# --- discovery ----------------------------------------------------------------------------------------


def test_an_s2_item_folder_as_downloaded_is_one_scene_and_its_other_files_are_listed_once(tmp_path):
    """visual.tif (uint8 TCI), SCL, AOT, WVP and B01 beside B02…B12: visual.tif was a second scene."""
    item = tmp_path / "S2B_48QUE_20200223_0_L2A"
    item.mkdir()
    transform = Affine(10, 0, 362600, 0, -10, 1987080)
    for band, plane in zip(S2, s2_cube(512, 512)):
        write_stack(item / f"{band}.tif", plane[None], transform, "EPSG:32648", [None])
    write_stack(item / "visual.tif", np.zeros((3, 512, 512), np.uint8), transform, "EPSG:32648", [None] * 3)
    for name in ("SCL", "AOT", "WVP", "B01"):
        write_stack(item / f"{name}.tif", np.ones((1, 256, 256), np.uint16), Affine(20, 0, 362600, 0, -20, 1987080),
                    "EPSG:32648", [None])  # fmt: skip
    result = clay_run(item, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "out" / f"{item.name}.parquet")["date"].to_pylist() == [date(2020, 2, 23)]  # item id
    listed = [line for line in result.stderr.splitlines() if "not bands of the engine" in line]
    assert len(listed) == 1 and all(name in listed[0] for name in ("visual.tif", "SCL.tif", "AOT.tif", "WVP.tif", "B01.tif"))


def test_a_manifest_saved_with_a_bom_and_crlf_reads_its_first_line(tmp_path):
    scene = write_stack(tmp_path / "a.tif", s2_cube(512, 512), Affine(10, 0, 362600, 0, -10, 1987080), "EPSG:32648", S2,
                        tags={"date": "2020-02-23"})  # fmt: skip
    (tmp_path / "list.txt").write_bytes("\ufeffa.tif\r\n".encode("utf-8"))
    result = clay_run(tmp_path / "list.txt", "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a.parquet").is_file() and scene.is_file()


def test_two_scenes_with_the_same_file_name_are_named_in_the_error(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        write_stack(tmp_path / folder / "scene.tif", s2_cube(512, 512), Affine(10, 0, 362600, 0, -10, 1987080),
                    "EPSG:32648", S2, tags={"date": "2020-02-23"})  # fmt: skip
    result = clay_run(tmp_path / "x" / "scene.tif", tmp_path / "y" / "scene.tif", "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "x" / "scene.tif") in line and str(tmp_path / "y" / "scene.tif") in line


def test_patch_cells_of_a_padded_chip_stay_inside_its_real_pixels(s2_embedder, tmp_path):
    """A scene smaller than a chip: patches are clipped to the real pixels the chip covers."""
    scene = write_stack(tmp_path / "small.tif", s2_cube(300, 400), Affine(10, 0, 362600, 0, -10, 1987080), "EPSG:32648",
                        S2, tags={"date": "2020-02-23"})  # fmt: skip
    result = s2_embedder.embed_scene_to(scene, tmp_path / "small.parquet", RunOptions(patch_embeddings=True))
    chip = shapely.from_wkb(pq.read_table(result.output)["geometry"][0].as_py())
    patches = [shapely.from_wkb(g) for g in pq.read_table(result.patches)["geometry"].to_pylist()]
    assert len(patches) == len(patch_cells(Chip(0, 0, 300, 400), 512, 32)) == 10 * 13
    assert all(chip.buffer(1e-9).covers(p) for p in patches)
    assert sum(p.area for p in patches) == pytest.approx(chip.area, rel=1e-6)


def test_20m_bands_beside_a_nodata_swath_edge_read_as_the_warp_reads_them(tmp_path):
    """S2's 20 m bands are read by a resampled window, which would blend the swath edge's zeros into
    the valid pixels beside it: such chips go through the warper, which leaves nodata out."""
    from dataclasses import replace

    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.scenes.reader import read_chip
    from clay.runtime.scenes.scene import open_scene

    cube = make_scene_array(1024, 1024)[:10]
    rows, cols = np.mgrid[0:1024, 0:1024]
    edge = cols > 300 + rows // 2  # a slanted swath edge: zeros (L2A NO_DATA) to its right
    for band, plane in zip(S2, cube):
        coarse = band not in ("B02", "B03", "B04", "B08")
        data = np.rint(np.where(edge, 0, plane)).astype(np.uint16)
        if coarse:
            data = data[::2, ::2]
        write_stack(tmp_path / f"{band}.tif", data[None], Affine(20 if coarse else 10, 0, 362600, 0, -(20 if coarse else 10), 1987080),
                    "EPSG:32648", [None], tags={"date": "2020-02-23"})  # fmt: skip
    scene = open_scene(tmp_path, read_engine_metadata(DEMO_ENGINE))
    assert {s.band for s in scene.sources if s.mode == "resample"} == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    warped = replace(scene, sources=tuple(replace(s, mode="warp" if s.mode == "resample" else s.mode, source_transform=None)
                                          for s in scene.sources))  # fmt: skip
    for chip in scene.chips():
        fast, fast_fraction = read_chip(scene, chip)
        slow, slow_fraction = read_chip(warped, chip)
        assert fast_fraction == slow_fraction and np.abs(fast - slow).max() <= 1.0, chip
