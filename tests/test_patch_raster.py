"""Patch rasters (``--patch-raster``): every cell holds the patch the documented rule picks, placed
where its polygon is, in a COG that rio-cogeo, rasterio and rioxarray read as it is; int8 dequantised
by them; published with the scene's other files; written in bounded memory.

The expected raster is computed here from the patch GeoParquet rows alone (brute force over every
cell and patch), not by the runtime's claim code. Runs on the plain runtime: the bundled demo engine
(S2, patch embeddings), the demo scene and a generated 13-band rotated south-up scene; no torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from clay.runtime import ClayEmbedder, RunOptions, SceneError
from clay.runtime.bands import BAND_NAMES, S2_BANDS
from clay.runtime.cli import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.outputs.geoparquet import AtomicParquetWriter
from clay.runtime.outputs.publish import OutputError, ScenePaths, staging_path
from clay.runtime.outputs.patch_grid import CellGrid, block_size
from clay.runtime.outputs.patch_raster import CODE_MID, CODE_NODATA, PatchRasterWriter
from clay.training.synthetic import make_scene_array
from pyproj import Transformer
from rasterio.transform import Affine

from .inputs import write_stack

CELL = 32
README = Path(__file__).resolve().parents[1] / "README.md"


def rotated_scene(path: Path) -> Path:
    """13 bands, 1100 × 700 px (remainders of 12 and 28 px: shifted chips off the 32-px grid), south-up
    (a positive row step) and turned by 25° in UTM 33S; S2 stores 0 (L2A nodata) over chip (0, 512),
    which is skipped while the shifted chips that overlap it are kept (``max_nodata`` 0.9)."""
    cube = make_scene_array(700, 1100, seed=11).astype(np.float32)
    cube[: len(BAND_NAMES) - 3, :512, 512:1024] = 0  # the S2 bands; VH, VV and the DEM are not the engine's
    transform = Affine.translation(500_000, 7_000_000) @ Affine.rotation(25) @ Affine.scale(10, 10)
    return write_stack(path, cube, transform, "EPSG:32733", BAND_NAMES, tags={"date": "2021-06-01"})


def geographic_scene(path: Path) -> Path:
    """S2 in EPSG:4326 (lon/lat degrees, ~11 m pixels), 700 × 600 px: a CRS whose axes are latitude first."""
    cube = np.rint(make_scene_array(600, 700, seed=12)[: len(S2_BANDS)]).astype(np.uint16)
    transform = Affine(0.0001, 0, 103.70, 0, -0.0001, 17.95)
    return write_stack(path, cube, transform, "EPSG:4326", S2_BANDS, tags={"date": "2020-02-23"})


def table_arrays(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    columns = {name: np.asarray(table[name]) for name in ("row", "col", "chip_row", "chip_col")}
    columns["embeddings"] = np.stack(table["embeddings"].to_numpy(zero_copy_only=False))
    columns["geometry"] = shapely.from_wkb(table["geometry"].to_pylist())
    return columns


def expected_owner(patches: dict, width: int, height: int) -> np.ndarray:
    """The rule, from the patch rows: for each cell, the index of the patch (row order = grid order)
    that contains the centre of the cell's real pixels and whose own centre is nearest it; -1: none."""
    rows, cols = patches["row"][None, :], patches["col"][None, :]
    bottom, right = np.minimum(rows + CELL, height), np.minimum(cols + CELL, width)
    cell_rows, cell_cols = np.arange(-(-height // CELL)), np.arange(-(-width // CELL))
    centre_r = ((CELL * cell_rows + np.minimum(CELL * cell_rows + CELL, height)) / 2)[:, None, None]
    centre_c = ((CELL * cell_cols + np.minimum(CELL * cell_cols + CELL, width)) / 2)[None, :, None]
    inside = (centre_r >= rows) & (centre_r <= bottom) & (centre_c >= cols) & (centre_c <= right)
    distance = (centre_r - (rows + bottom) / 2) ** 2 + (centre_c - (cols + right) / 2) ** 2
    distance = np.where(inside, distance, np.inf)
    owner = distance.argmin(axis=2)  # the first of equals: grid order
    return np.where(np.isfinite(distance.min(axis=2)), owner, -1)


def read_cells(path: Path, overview_level: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[H, W, dim]`` values as GDAL's metadata says to read them (``read(masked=True)``, then each
    band's scale and offset) and the nodata mask ``[H, W]``; of an overview level (whose bands, opened
    on their own, do not carry the scales) with ``overview_level``."""
    with rasterio.open(path) as src:
        scales, offsets = np.array(src.scales)[:, None, None], np.array(src.offsets)[:, None, None]
    with rasterio.open(path, overview_level=overview_level) as src:
        data = src.read(masked=True)
    values = data.astype(np.float64).filled(np.nan) * scales + offsets
    return np.moveaxis(values, 0, -1), np.ma.getmaskarray(data).all(axis=0)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def embedder():
    with ClayEmbedder(DEMO_ENGINE, options=RunOptions(readers=2)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def runs(embedder, tmp_path_factory):
    """Each (scene, raster dtype) embedded once, with the patch GeoParquet beside the raster."""
    folder, done = tmp_path_factory.mktemp("rasters"), {}

    def run(scene: str, dtype: str = "float32"):
        if (scene, dtype) not in done:
            make = {"demo": lambda _: DEMO_SCENE, "geographic": geographic_scene}.get(scene, rotated_scene)
            path = make(folder / f"{scene}.tif")
            edge = "pad" if scene == "rotated-padded" else "shift"  # padded edge chips: patches clipped at the edge
            options = RunOptions(readers=2, patch_embeddings=True, patch_raster=True, raster_dtype=dtype,
                                 max_nodata=0.9, edge=edge)  # fmt: skip
            done[scene, dtype] = embedder.embed_scene_to(path, folder / f"{scene}-{dtype}.parquet", options)
        return done[scene, dtype]

    return run


@pytest.mark.parametrize("scene", ["demo", "rotated", "rotated-padded", "geographic"])
def test_each_cell_holds_exactly_the_vector_of_the_patch_the_rule_picks(runs, scene):
    result = runs(scene)
    patches = table_arrays(result.patches)
    opened = result.opened
    owner = expected_owner(patches, opened.width, opened.height)
    values, nodata = read_cells(result.raster)
    assert values.shape == (-(-opened.height // CELL), -(-opened.width // CELL), patches["embeddings"].shape[1])
    assert np.array_equal(nodata, owner < 0)
    assert np.array_equal(values[owner >= 0], patches["embeddings"][owner[owner >= 0]])  # float32: equal
    if scene in ("demo", "geographic"):
        assert not nodata.any()  # every chip kept: every cell has a value, remainders included
    elif scene == "rotated-padded":  # no shifted chip overlaps the skipped one: its cells, and only they
        assert nodata.sum() == 16 * 16 and nodata[:16, 16:32].all() and result.chips_skipped == 1
    else:
        # chip (0, 512) was skipped: the cells whose centre only it holds are nodata, the shifted chips
        # fill the rest of it, and every patch of an aligned chip is its own cell
        assert nodata.sum() == 12 and nodata[:6, 16:18].all()
        assert result.chips_skipped == 1
    aligned = (patches["chip_row"] % CELL == 0) & (patches["chip_col"] % CELL == 0)
    cells = (patches["row"][aligned] // CELL, patches["col"][aligned] // CELL)
    assert np.array_equal(values[cells], patches["embeddings"][aligned])


@pytest.mark.parametrize("scene", ["demo", "rotated", "geographic"])
def test_the_rasters_crs_and_transform_put_each_cell_centre_inside_its_patch_polygon(runs, scene):
    result = runs(scene)
    opened = result.opened
    patches = table_arrays(result.patches)
    owner = expected_owner(patches, opened.width, opened.height)
    with rasterio.open(result.raster) as src:
        assert src.crs == opened.crs
        assert src.transform.almost_equals(opened.transform @ Affine.scale(CELL))
        transform, crs = src.transform, src.crs
    rows, cols = np.nonzero(owner >= 0)
    # the centre of each cell's real pixels, in the raster's own pixel coordinates
    centre_rows = (CELL * rows + np.minimum(CELL * rows + CELL, opened.height)) / 2 / CELL
    centre_cols = (CELL * cols + np.minimum(CELL * cols + CELL, opened.width)) / 2 / CELL
    xs, ys = transform @ (centre_cols, centre_rows)
    lons, lats = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    polygons = patches["geometry"][owner[rows, cols]]
    gaps = shapely.distance(polygons, shapely.points(lons, lats))
    assert gaps.max() < 1e-8, gaps.max()  # inside or on the edge (a tie), to a millimetre


def grid_ordered(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows in grid order (chips row-major, then their patches row-major): the order the rule's ties
    follow, whatever order the file holds them in."""
    order = np.lexsort((columns["col"], columns["row"], columns["chip_col"], columns["chip_row"]))
    return {name: values[order] for name, values in columns.items()}


@pytest.mark.parametrize("scene", ["demo", "rotated", "rotated-padded", "geographic"])
def test_patch_rows_without_overlap_are_exactly_the_patches_the_raster_shows(runs, scene):
    """``WHERE NOT overlap`` on the patch file takes each cell once: its rows are the patches that the
    rule (computed here from the rows' positions alone) gives at least one cell, and the raster holds
    their vectors. On a scene whose size is no multiple of the chip size (all four here)."""
    result = runs(scene)
    table = pq.read_table(result.patches)
    assert table.schema.field("overlap").type == "bool" and table["overlap"].null_count == 0
    assert b"patch raster" in table.schema.field("overlap").metadata[b"description"]
    patches = grid_ordered({**table_arrays(result.patches), "overlap": np.asarray(table["overlap"])})
    opened = result.opened
    assert opened.width % 512 and opened.height % 512
    owner = expected_owner(patches, opened.width, opened.height)
    shown = np.zeros(len(patches["row"]), bool)
    shown[owner[owner >= 0]] = True
    assert np.array_equal(~patches["overlap"], shown)
    # one row per cell: every cell's patch is a row without overlap, and each such row's cells are
    # adjacent (a shifted patch may hold the last full cell and the clipped one past it)
    cells_per_row = np.bincount(owner[owner >= 0], minlength=len(shown))[shown]
    assert cells_per_row.min() == 1 and cells_per_row.max() <= 4, np.bincount(cells_per_row)
    values, nodata = read_cells(result.raster)
    assert np.array_equal(values[~nodata], patches["embeddings"][owner[~nodata]])
    if scene != "rotated-padded":  # shifted chips: some rows overlap, the aligned chips' never
        aligned = (patches["chip_row"] % 512 == 0) & (patches["chip_col"] % 512 == 0)
        assert patches["overlap"].any() and not patches["overlap"][aligned].any()
    else:
        assert not patches["overlap"].any()


@pytest.mark.parametrize("scene", ["demo", "rotated"])
def test_chip_rows_overlap_by_the_fraction_of_their_cells_another_chip_holds(runs, scene):
    """A chip's ``overlap_fraction`` is the share of the cells whose centre it contains that the rule
    gives to another chip's patches; on "rotated" the chip (0, 512) was skipped, so the shifted
    chips beside it hold part of its ground and overlap less than where their neighbour is kept."""
    result = runs(scene)
    chips_table = pq.read_table(result.output)
    patches = grid_ordered(table_arrays(result.patches))
    opened = result.opened
    owner = expected_owner(patches, opened.width, opened.height)
    height, width = owner.shape
    centre_r = (CELL * np.arange(height) + np.minimum(CELL * np.arange(height) + CELL, opened.height)) / 2
    centre_c = (CELL * np.arange(width) + np.minimum(CELL * np.arange(width) + CELL, opened.width)) / 2
    fractions = np.asarray(chips_table["overlap_fraction"])
    for row, col, fraction, flag in zip(chips_table["row"].to_pylist(), chips_table["col"].to_pylist(), fractions,
                                        chips_table["overlap"].to_pylist()):  # fmt: skip
        bottom, right = min(row + 512, opened.height), min(col + 512, opened.width)
        inside = ((centre_r >= row) & (centre_r <= bottom))[:, None] & ((centre_c >= col) & (centre_c <= right))[None, :]
        mine = (patches["chip_row"] == row) & (patches["chip_col"] == col)
        others = inside & ~np.isin(owner, np.flatnonzero(mine))
        assert fraction == pytest.approx(others.sum() / inside.sum(), abs=1e-6)
        assert flag == (fraction > 0)
        if row % 512 == 0 and col % 512 == 0:
            assert fraction == 0
    assert (fractions > 0).any()
    if scene == "rotated":  # the shifted chip (0, 588) holds cells of the skipped (0, 512); (188, 588) cannot
        by_origin = dict(zip(zip(chips_table["row"].to_pylist(), chips_table["col"].to_pylist()), fractions))
        assert by_origin[0, 588] < by_origin[188, 588]


def test_int8_dequantises_through_gdal_rasterio_and_rioxarray_to_cosine_099(runs):
    float32, _ = read_cells(runs("demo").raster)
    result = runs("demo", "int8")
    values, nodata = read_cells(result.raster)
    assert not nodata.any()
    similarity = cosines(values, float32)
    assert similarity.min() >= 0.99, similarity.min()  # measured: min 0.99998, median 0.99999 (demo weights)
    with rasterio.open(result.raster) as src:
        codes, scales = src.read(), np.array(src.scales)
        assert src.dtypes[0] == "uint8" and src.nodata == CODE_NODATA == 0  # GDAL's Byte: read alike by GDAL < 3.7
        assert codes.min() >= 1 and codes.max() <= 255  # 0 is kept for nodata
    error = np.abs(values - float32) / scales  # in codes: rounding, at most half a step
    assert error.max() <= 0.5 + 1e-3, error.max()
    rioxarray = pytest.importorskip("rioxarray", reason="rioxarray is in the dev extra")
    with pytest.warns(UserWarning, match="Scales differ"):  # per-band scales: applied, and said so
        array = rioxarray.open_rasterio(result.raster, mask_and_scale=True)
    assert np.allclose(np.moveaxis(array.values, 0, -1), values, atol=1e-6)
    bands = rioxarray.open_rasterio(result.raster, mask_and_scale=True, band_as_variable=True)
    assert bands["band_1"].attrs["long_name"] == "embedding_000"
    assert np.allclose(bands["band_1"].values, values[..., 0], atol=1e-6)


def gdal_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, check=True)


def system_gdal() -> str:
    """The version of the GDAL command-line tools on the PATH (Debian 12's gdal-bin: 3.6.2), or skip."""
    if not (shutil.which("gdalinfo") and shutil.which("gdal_translate") and shutil.which("gdallocationinfo")):
        pytest.skip("GDAL's command-line tools are not installed (Debian: apt-get install gdal-bin, GDAL 3.6): the "
                    "int8 raster is checked with rasterio's bundled GDAL only")  # fmt: skip
    return gdal_tool("gdalinfo", "--version").stdout.split(",")[0].removeprefix("GDAL ")


def test_int8_reads_right_in_the_systems_older_gdal_as_in_rasterios(runs, tmp_path):
    """GDAL < 3.7 has no Int8 type: an Int8 raster came back from Debian 12's GDAL 3.6 as unsigned
    bytes (code -12 as 244) with its -128 nodata ignored. Read with the system's GDAL tools (Debian
    12's gdal-bin 3.6 here) and dequantised by them (``gdal_translate -unscale``), every cell is the
    float raster's vector within half a quantisation step; nodata cells are that GDAL's nodata; the
    scale and offset are rasterio's (GDAL 3.10)."""
    version = system_gdal()
    reference, empty = read_cells(runs("rotated").raster)
    result = runs("rotated", "int8")
    assert empty.any() and not empty.all()  # the skipped chip's cells are nodata
    info = json.loads(gdal_tool("gdalinfo", "-json", result.raster).stdout)
    with rasterio.open(result.raster) as src:
        scales, offsets, codes = np.array(src.scales), np.array(src.offsets), src.read()
        assert src.count == len(info["bands"]) == reference.shape[-1]
    assert {band["type"] for band in info["bands"]} == {"Byte"}
    assert [band["noDataValue"] for band in info["bands"]] == [0.0] * len(scales)
    assert np.allclose([band["scale"] for band in info["bands"]], scales, rtol=1e-12, atol=0)
    assert np.allclose([band["offset"] for band in info["bands"]], offsets, rtol=1e-12, atol=1e-15)
    unscaled = tmp_path / "unscaled.tif"
    gdal_tool("gdal_translate", "-q", "-ot", "Float64", "-unscale", result.raster, unscaled)  # that GDAL applies them
    with rasterio.open(unscaled) as src:
        values = np.moveaxis(src.read(), 0, -1)
    step = np.abs(values[~empty] - reference[~empty]) / scales
    assert step.max() <= 0.5 + 1e-3, (version, step.max())
    rows, cols = np.nonzero(empty)
    for row, col in [(rows[0], cols[0]), (rows[-1], cols[-1])]:  # nodata: code 0 in every band, that GDAL's nodata
        said = gdal_tool("gdallocationinfo", "-valonly", result.raster, col, row).stdout.split()
        assert [float(v) for v in said] == [0.0] * len(scales)
    rows, cols = np.nonzero(~empty)
    for row, col in [(rows[0], cols[0]), (rows[len(rows) // 2], cols[len(rows) // 2]), (rows[-1], cols[-1])]:
        said = np.array(gdal_tool("gdallocationinfo", "-valonly", result.raster, col, row).stdout.split(), float)
        assert np.array_equal(said, codes[:, row, col]) and said.min() >= 1  # the codes, unsigned, in both GDALs
        assert np.abs(said * scales + offsets - reference[row, col]).max() <= (0.5 + 1e-3) * scales.max()
    middle = np.abs(codes[:, ~empty].astype(int) - CODE_MID).max()
    assert middle == 127  # each band spans its range: codes 1…255 around 128


def test_rioxarray_opens_the_raster_with_band_y_x_dims_and_cell_centre_coordinates(runs):
    rioxarray = pytest.importorskip("rioxarray", reason="rioxarray is in the dev extra")
    result = runs("demo")
    array = rioxarray.open_rasterio(result.raster, mask_and_scale=True)
    values, _ = read_cells(result.raster)
    transform = result.opened.transform @ Affine.scale(CELL)
    assert array.dims == ("band", "y", "x") and array.shape == (256, 34, 34)
    assert np.allclose(array.x.values, transform.c + transform.a * (np.arange(34) + 0.5))
    assert np.allclose(array.y.values, transform.f + transform.e * (np.arange(34) + 0.5))
    assert array.rio.crs == result.opened.crs and list(array.long_name[:2]) == ["embedding_000", "embedding_001"]
    assert np.array_equal(np.moveaxis(array.values, 0, -1), values.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_raster_is_a_valid_cog_tiled_compressed_with_overviews_and_the_parquet_provenance(runs, dtype):
    cogeo = pytest.importorskip("rio_cogeo.cogeo", reason="rio-cogeo is in the dev extra")
    result = runs("demo", dtype)
    valid, errors, warnings = cogeo.cog_validate(result.raster, strict=True)
    assert valid and not errors and not warnings, (errors, warnings)
    metadata = pq.read_schema(result.patches).metadata
    with rasterio.open(result.raster) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.compression.name == "zstd" and src.interleaving.name == "pixel" and src.is_tiled
        block = block_size(256, 4 if dtype == "float32" else 1, _grid(result))
        assert src.block_shapes[0] == (block, block) and block >= 16
        assert src.overviews(1) == [2]  # 34 × 34 cells fit one tile, and still get an overview
        coarse, full = read_cells(result.raster, overview_level=0)[0], read_cells(result.raster)[0]
        assert np.array_equal(coarse, full[1::2, 1::2])  # nearest: every value is a patch's
        assert src.descriptions[:2] == ("embedding_000", "embedding_001") and len(src.descriptions) == 256
        tags = src.tags()
    for key in ("clay:engine", "clay:scene_crs", "clay:preprocessing"):
        assert tags[key.replace(":", "_").upper()] == metadata[key.encode()].decode()
    assert tags["CLAY_DATE"] == "2020-02-23" and tags["CLAY_SOURCE_URL"] == str(DEMO_SCENE.resolve())
    assert json.loads(tags["CLAY_RASTER"])["dtype"] == dtype


def _grid(result) -> CellGrid:
    scene = result.opened
    return CellGrid.of(scene.transform, scene.width, scene.height, scene.patch_size)


def test_the_ray_jobs_writer_makes_the_same_raster_from_the_same_vectors(runs, embedder, tmp_path):
    """``clay-run --ray`` publishes through ``write_scene`` (all of a scene's rows at once): same cells."""
    from clay.runtime.ray_job import write_scene

    result = runs("rotated")
    chips_table, patches = pq.read_table(result.output), table_arrays(result.patches)
    kept = set(zip(chips_table["row"].to_pylist(), chips_table["col"].to_pylist()))
    chips = [chip for chip in result.opened.chips() if (chip.row, chip.col) in kept]
    grids = np.zeros((len(chips), 16, 16, patches["embeddings"].shape[1]), np.float32)
    for k, chip in enumerate(chips):
        mine = (patches["chip_row"] == chip.row) & (patches["chip_col"] == chip.col)
        i, j = (patches["row"][mine] - chip.row) // CELL, (patches["col"][mine] - chip.col) // CELL
        grids[k, i, j] = patches["embeddings"][mine]
    paths = ScenePaths.for_chip_file(tmp_path / "ray.parquet", False, True)
    embeddings = np.stack(chips_table["embeddings"].to_numpy(zero_copy_only=False))
    write_scene(result.opened, paths, embedder.metadata, chips, list(chips_table["nodata_fraction"].to_numpy()), embeddings,
                grids, RunOptions(patch_raster=True))  # fmt: skip
    a, b = read_cells(result.raster), read_cells(paths.raster)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0][~a[1]], b[0][~b[1]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray.parquet", "ray.patches.tif"]


@pytest.mark.parametrize("failing", ["raster", "chips"])
def test_a_failed_publication_leaves_no_file_of_the_scene_and_resume_knows_the_raster(embedder, tmp_path, monkeypatch, failing):
    """The raster is published before the chip file (the done-marker): whichever fails, nothing of
    the scene stays under a final name, and ``--resume`` redoes a scene whose raster is missing."""
    target = tmp_path / "demo.parquet"
    options = RunOptions(readers=2, patch_raster=True, raster_dtype="int8")
    paths = ScenePaths.for_chip_file(target, False, True)
    assert paths.files == (tmp_path / "demo.patches.tif", target)  # published in this order
    if failing == "raster":
        def broken(self):
            raise OutputError(f"{self.path}: cannot write (injected failure)")

        monkeypatch.setattr(PatchRasterWriter, "commit", broken)
    else:
        commit = AtomicParquetWriter.commit

        def broken(self):
            if self.path == target:
                raise OutputError(f"{self.path}: cannot write (injected failure)")
            return commit(self)

        monkeypatch.setattr(AtomicParquetWriter, "commit", broken)
    with pytest.raises(SceneError, match="injected failure"):
        embedder.embed_scene_to(DEMO_SCENE, target, options)
    assert list(tmp_path.iterdir()) == [] and not paths.complete()
    monkeypatch.undo()
    embedder.embed_scene_to(DEMO_SCENE, target, RunOptions(readers=2))  # chip file only
    assert not paths.complete()  # a run that asks for the raster would redo this scene
    staging_path(paths.raster).mkdir()  # what a killed run leaves
    (staging_path(paths.raster) / "level0.f32").write_bytes(b"\0" * 64)
    paths.clear_partials()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.parquet"]


def test_clay_run_writes_the_raster_without_the_patch_file_and_times_it(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", DEMO_SCENE, "--engine", DEMO_ENGINE, "--out", out,
                             "--patch-raster", "--raster-dtype", "int8"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["T48QUE-20200223.parquet", "T48QUE-20200223.patches.tif"]
    summary = result.stdout.strip().splitlines()[-1]  # the closing line, on stdout
    assert "patch raster" in summary and summary.startswith("clay-run: done: 9 chips")
    refused = subprocess.run([sys.executable, "-m", "clay.runtime.cli", DEMO_SCENE, "--engine", DEMO_ENGINE, "--out", out,
                              "--patch-raster", "--raster-dtype", "float16"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "float16" in refused.stderr and "GDAL" in refused.stderr and "Traceback" not in refused.stderr


def test_a_stage_timed_inside_another_counts_once():
    from clay.runtime.timing import StageClock

    clock = StageClock()
    with clock.timed("write"):
        time.sleep(0.05)
        with clock.timed("patch raster"):
            time.sleep(0.1)
    assert 0.1 <= clock.seconds["patch raster"] < 0.14 and 0.05 <= clock.seconds["write"] < 0.09, clock.seconds


def readme_block(holding: str) -> str:
    """The README's Python block that holds ``holding``."""
    blocks = README.read_text().split("```python\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if holding in b.split("```")[0]]
    return block


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_readmes_similarity_map_writes_one_band_on_the_rasters_grid(runs, tmp_path, monkeypatch, dtype):
    from clay.benchmarks.patch_raster import QUERY_CELL  # the cell the picture in docs/ shows

    result, reference = runs("demo", dtype), read_cells(runs("demo").raster)[0]
    (tmp_path / "clay-demo").mkdir()
    shutil.copy(result.raster, tmp_path / "clay-demo" / "demo.patches.tif")
    monkeypatch.chdir(tmp_path)
    code = readme_block('"similarity.tif"')
    assert f"row, col = {QUERY_CELL[0]}, {QUERY_CELL[1]}" in code
    exec(compile(code, "README.md", "exec"), {})
    with rasterio.open(tmp_path / "similarity.tif") as out, rasterio.open(result.raster) as src:
        assert (out.count, out.dtypes[0], out.crs, out.transform) == (1, "float32", src.crs, src.transform)
        similarity = out.read(1)
    unit = reference / np.linalg.norm(reference, axis=-1, keepdims=True)
    expected = unit @ unit[QUERY_CELL]
    assert abs(similarity[QUERY_CELL] - 1) < 1e-5
    assert np.abs(similarity - expected).max() < (1e-5 if dtype == "float32" else 5e-3)  # int8: measured 1.1e-3


def test_memory_stays_bounded_for_a_five_times_longer_scene():
    """A 10980-px-wide scene at 768 dimensions, 2 048 px and 10 240 px long (65 MB and 322 MB of
    float32 cells): growth while rows stream in stays a few MB, and publishing (GDAL's COG copy, its
    swath and compression buffers) grows by far less than the extra 257 MB of cells."""
    from clay.benchmarks.patch_raster import memory_growth

    one, five = memory_growth(2048), memory_growth(5 * 2048)
    assert one["written_mb"] < 32 and five["written_mb"] < 32, (one, five)  # no array of the scene while streaming
    assert five["published_mb"] - one["published_mb"] < 64, (one, five)  # measured: +14 MB (175 → 189 MB)
