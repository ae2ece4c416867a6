"""Outputs readers can query and a crash cannot corrupt: GeoParquet checked by a validator nobody
here wrote, bbox filtering, durable all-or-nothing scenes, archives that keep going.

Runs on the plain runtime: the bundled demo engine (S2, with patch embeddings) and generated
uint16 S2 scenes, no torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from clay.runtime import ClayEmbedder, RunOptions, SceneError
from clay.runtime.outputs import geoparquet as output_module
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.outputs.geoparquet import AtomicParquetWriter
from clay.runtime.outputs.publish import OutputError, ScenePaths
from clay.training.synthetic import write_scene

VALIDATOR = shutil.which("geoparquet-validator") or str(Path(sys.executable).parent / "geoparquet-validator")


def s2_scene(path: Path, size: int = 1024, seed: int = 0) -> Path:
    return write_scene(path, size, size, seed=seed, dtype="uint16", bands=S2_BANDS)


def clay_run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)  # fmt: skip


def validate(path: Path) -> dict[str, str]:
    """geoparquet-validator's verdict per conformance test (JSON report)."""
    if not Path(VALIDATOR).exists():
        pytest.skip("geoparquet-validator is not installed (pip install geoparquet-validator, the dev extra has it)")
    result = subprocess.run([VALIDATOR, "check", "--json", str(path)], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    assert result.returncode == 0, [o for o in report["outcomes"] if o["status"] == "fail"]
    return {o["id"]: o["status"] for o in report["outcomes"]}


def assert_conformant(outcomes: dict[str, str], row_groups: int) -> None:
    assert not [k for k, v in outcomes.items() if v == "fail"]
    covering = [v for k, v in outcomes.items() if k.startswith("/conf/covering/")]
    assert covering and set(covering) == {"pass"}, outcomes
    assert outcomes["/conf/distribution/geospatial-statistics"] == "pass"
    # spatial order is measured from 5 row groups on; a scene's chips are in one
    assert outcomes["/conf/distribution/spatial-order"] == ("pass" if row_groups >= 5 else "skip")


@pytest.fixture(scope="module")
def embedder():
    with ClayEmbedder(DEMO_ENGINE, options=RunOptions(readers=2, patch_embeddings=True)) as loaded:
        yield loaded


def test_demo_and_generated_outputs_pass_the_validator_in_every_class(embedder, tmp_path):
    scenes = [DEMO_SCENE, s2_scene(tmp_path / "generated.tif", 1300)]
    for scene in scenes:
        result = embedder.embed_scene_to(scene, tmp_path / f"{Path(scene).stem}.parquet")
        for path in (result.output, result.patches):
            meta = pq.ParquetFile(path).metadata
            assert meta.num_row_groups == 1  # a scene's chips (and its patches) in one row group
            assert_conformant(validate(path), meta.num_row_groups)
            geo = json.loads(pq.read_schema(path).metadata[b"geo"])
            assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def test_bbox_queries_skip_row_groups_and_return_exactly_the_intersecting_rows(embedder, tmp_path, monkeypatch):
    gpd = pytest.importorskip("geopandas")
    monkeypatch.setattr(output_module, "ROW_GROUP_ROWS", 128)  # several row groups from a small scene
    result = embedder.embed_scene_to(s2_scene(tmp_path / "s.tif", 1300), tmp_path / "s.parquet")
    chips, patches = pq.read_table(result.output), result.patches
    assert pq.ParquetFile(patches).metadata.num_row_groups == 18  # 9 chips × 256 patch rows, 128 per group
    assert_conformant(validate(patches), 18)
    # chips: a box from the centre of the first chip to the centre of the fifth (grid 3 × 3) meets four chips
    centres = [shapely.from_wkb(g).centroid for g in chips["geometry"].to_pylist()]
    query = (min(centres[0].x, centres[4].x), min(centres[0].y, centres[4].y),
             max(centres[0].x, centres[4].x), max(centres[0].y, centres[4].y))  # fmt: skip
    frame = gpd.read_parquet(result.output, bbox=query)
    intersecting = {(r, c) for r, c, g in zip(chips["row"].to_pylist(), chips["col"].to_pylist(), chips["geometry"].to_pylist())
                    if shapely.from_wkb(g).intersects(shapely.box(*query))}  # fmt: skip
    assert set(zip(frame["row"], frame["col"])) == intersecting and len(intersecting) == 4
    # patches: the same box; readers filter on the bbox column, and skip row groups by its statistics
    table = pq.read_table(patches)
    bounds = shapely.bounds(shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)))
    overlapping = {(r, c) for (r, c), (x0, y0, x1, y1) in zip(zip(table["row"].to_pylist(), table["col"].to_pylist()), bounds)
                   if x0 <= query[2] and x1 >= query[0] and y0 <= query[3] and y1 >= query[1]}  # fmt: skip
    frame = gpd.read_parquet(patches, bbox=query)
    assert set(zip(frame["row"], frame["col"])) == overlapping and 0 < len(overlapping) < table.num_rows
    fragment = next(ds.dataset(patches).get_fragments())
    condition = ((ds.field("bbox", "xmin") <= query[2]) & (ds.field("bbox", "xmax") >= query[0])
                 & (ds.field("bbox", "ymin") <= query[3]) & (ds.field("bbox", "ymax") >= query[1]))  # fmt: skip
    assert 0 < len(fragment.split_by_row_group(condition)) < 18  # statistics let readers skip row groups


def test_duckdb_reads_the_geometry_natively_and_filters_on_the_bbox_column(embedder, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    result = embedder.embed_scene_to(DEMO_SCENE, tmp_path / "demo.parquet")
    con = duckdb.connect()
    types = dict(con.sql(f"DESCRIBE SELECT * FROM '{result.output}'").fetchall()[i][:2] for i in range(8))
    assert types["geometry"].startswith("GEOMETRY") and "CRS84" in types["geometry"]
    table = pq.read_table(result.output)
    west = float(np.median([b["xmin"] for b in table["bbox"].to_pylist()]))
    ((count,),) = con.sql(f"SELECT count(*) FROM '{result.output}' WHERE bbox.xmin < {west}").fetchall()
    assert count == sum(b["xmin"] < west for b in table["bbox"].to_pylist()) and 0 < count < table.num_rows
    ((wkt,),) = con.sql(f"SELECT ST_AsText(geometry) FROM '{result.output}' LIMIT 1").fetchall()
    assert wkt.startswith("POLYGON ((103.7")


@pytest.mark.parametrize("failing", ["patches", "chips"])
def test_a_failed_publication_leaves_no_file_of_the_scene_and_resume_redoes_it(embedder, tmp_path, monkeypatch, failing):
    """The patch file is published first, the chip file (the done-marker) last: whichever fails,
    no file of the scene stays under a final name."""
    scene, target = s2_scene(tmp_path / "s.tif", 700), tmp_path / "s.parquet"
    paths = ScenePaths.for_chip_file(target, patch_embeddings=True)
    commit = AtomicParquetWriter.commit

    def failing_commit(self):
        if self.path == getattr(paths, failing):
            raise OutputError(f"{self.path}: cannot write (injected failure)")
        return commit(self)

    monkeypatch.setattr(AtomicParquetWriter, "commit", failing_commit)
    with pytest.raises(SceneError, match="injected failure"):
        embedder.embed_scene_to(scene, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"] and not paths.complete()
    monkeypatch.setattr(AtomicParquetWriter, "commit", commit)
    result = embedder.embed_scene_to(scene, target)
    assert paths.complete() and pq.read_table(result.output).num_rows == 4


INJECT_DISK_FULL = """
import errno, sys
import pyarrow.parquet as pq
from clay.runtime.outputs import geoparquet as output
output.ROW_GROUP_ROWS = 2  # rows reach the disk mid-scene
calls = {{"n": 0}}
real = pq.ParquetWriter.write_table
def write_table(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *args, **kwargs)
pq.ParquetWriter.write_table = write_table
from clay.runtime.cli import main
main({args!r})
"""


def test_disk_full_mid_scene_is_one_line_and_leaves_no_file(tmp_path):
    scene = s2_scene(tmp_path / "s.tif", 1300)
    out = tmp_path / "out"
    code = INJECT_DISK_FULL.format(args=[str(scene), "--engine", str(DEMO_ENGINE), "--out", str(out), "--batch", "1"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and "No space left on device" in lines[-1] and "s.parquet" in lines[-1]
    assert not out.exists()  # no final file, no .partial, and not the folder the failed run made


def truncated(path: Path) -> Path:
    """Cut off half-way, as an interrupted download leaves it: the header is intact."""
    s2_scene(path, 1100, seed=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zeroed_tile(path: Path) -> Path:
    """One compressed tile's bytes overwritten with zeros: the header and every other tile intact."""
    s2_scene(path, 1024, seed=4)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=1))  # tile column 2, row 1: chip (0, 512)
        size = int(src.get_tag_item("BLOCK_SIZE_2_1", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * size)
    return path


def test_keep_going_finishes_the_good_scenes_and_reports_the_corrupt_ones(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    scenes = [s2_scene(folder / "a.tif", 700, 1), truncated(folder / "b.tif"), s2_scene(folder / "c.tif", 700, 2),
              zeroed_tile(folder / "d.tif"), s2_scene(folder / "e.tif", 700, 5)]  # fmt: skip
    out = tmp_path / "out"
    result = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", out, "--keep-going")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.parquet", "c.parquet", "e.parquet"]
    report = result.stderr[result.stderr.index("scene(s) failed"):]
    assert "2 scene(s) failed" in result.stderr and "b: " in report and "d: " in report
    zeroed = next(line for line in report.splitlines() if "d: " in line)
    assert "d.tif" in zeroed and "read failed at rows 0-512, cols 512-1024" in zeroed  # the file and the chip window
    assert "See previous exception" not in zeroed and zeroed.endswith(")")  # GDAL's own reason in brackets
    # without --keep-going the first failure stops the run, after the scenes before it
    stopped = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", tmp_path / "stop")
    assert stopped.returncode == 1 and "b.tif" in stopped.stderr.strip().splitlines()[-1] and "Traceback" not in stopped.stderr
    assert not (tmp_path / "stop" / "e.parquet").exists()


def test_resume_skips_complete_scenes_and_clears_stale_partials(tmp_path):
    scenes = [s2_scene(tmp_path / "a.tif", 600, 1), s2_scene(tmp_path / "b.tif", 600, 2)]
    out = tmp_path / "out"
    assert clay_run(scenes[0], "--engine", DEMO_ENGINE, "--out", out / "a.parquet").returncode == 0
    (out / "b.parquet.partial").write_bytes(b"left by a killed run")
    result = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", out, "--resume", "--patch-embeddings")
    assert result.returncode == 0, result.stderr
    # a.parquet has no patch file: not complete for a run that asks for patches, so it is redone
    assert "skipped (--resume)" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.parquet", "a.patches.parquet", "b.parquet", "b.patches.parquet"]
    again = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", out, "--resume", "--patch-embeddings")
    assert again.returncode == 0 and again.stderr.count("skipped (--resume)") == 2


def test_embed_scene_to_makes_its_folder_and_checks_it_before_the_scene_is_read(embedder, tmp_path):
    """The Python API writes where it is told, as clay-run does: missing folders are made; an
    unwritable place fails before the scene is opened (here a scene that does not exist: the output
    is what the error is about); a scene that fails takes the folders it made with it."""
    target = tmp_path / "out" / "deep" / "s.parquet"
    result = embedder.embed_scene_to(s2_scene(tmp_path / "s.tif", 512), target)
    assert result.output == target and pq.read_table(target).num_rows == 1
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not writable"):
        embedder.embed_scene_to(tmp_path / "missing.tif", blocker / "out" / "s.parquet")
    with pytest.raises(SceneError, match="no such file"):
        embedder.embed_scene_to(tmp_path / "missing.tif", tmp_path / "new" / "deeper" / "s.parquet")
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_before_writing_leaves_no_output_folder(tmp_path):
    scene = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": "EPSG:32648",
               "transform": rasterio.transform.from_origin(0, 0, 10, 10)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:  # one band of the engine's ten: refused at opening
        dst.write(np.ones((1, 64, 64), np.uint8))
        dst.set_band_description(1, "B02")
    result = clay_run(scene, "--engine", DEMO_ENGINE, "--out", tmp_path / "new" / "out")
    assert result.returncode == 1 and "lacks band(s) B03" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before the run is left alone
    assert clay_run(scene, "--engine", DEMO_ENGINE, "--out", tmp_path / "kept").returncode == 1
    assert (tmp_path / "kept").is_dir()
