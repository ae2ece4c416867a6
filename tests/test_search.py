"""clay-search: exact answers equal a brute-force cosine computed here with numpy and shapely from the
GeoParquet rows; the LanceDB index finds ≥ 95 % of the exact top 10; no two answer rows share ground;
bad queries are one line and exit 1. On the demo scene (the bundled engine, patch rows) and a small
generated archive written through the runtime's GeoParquet writer. No torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from clay.runtime import ClayEmbedder, RunOptions
from clay.runtime.cli import DEMO_ENGINE, DEMO_SCENE
from clay.runtime.outputs.geoparquet import AtomicParquetWriter, chip_schema, row_columns
from clay.runtime.search import SearchError, open_archive, search
from clay.runtime.search.cli import main
from click.testing import CliRunner

from .test_outputs import validate

DIM = 32  # the generated archive's
TOLERANCE = 1e-3  # footprints sharing more than this share of the smaller area are the same ground


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo scene's chip and patch files, in folder ``a`` and a copy in folder ``b`` (the same
    ground twice, as two runs of one place would be)."""
    root = tmp_path_factory.mktemp("search-demo")
    with ClayEmbedder(DEMO_ENGINE, options=RunOptions(readers=2)) as embedder:
        embedder.embed_scene_to(DEMO_SCENE, root / "a" / "demo.parquet", RunOptions(readers=2, patch_embeddings=True))
    shutil.copytree(root / "a", root / "b")
    return root


def write_generated(path: Path, vectors: np.ndarray, origin: tuple[float, float], model: str = "clay-v0",
                    overlap: np.ndarray | None = None, weights: str = "0f1e") -> Path:  # fmt: skip
    """Rows as clay-run writes chips: one 0.01° square per vector on a grid from ``origin`` (lon, lat)."""
    count, dim = vectors.shape
    side = int(np.ceil(np.sqrt(count)))
    rows, cols = np.divmod(np.arange(count), side)
    polygons = [shapely.box(origin[0] + 0.01 * c, origin[1] - 0.01 * (r + 1), origin[0] + 0.01 * (c + 1), origin[1] - 0.01 * r)
                for r, c in zip(rows, cols)]  # fmt: skip
    overlap = np.zeros(count, bool) if overlap is None else overlap
    metadata = {"clay:engine": json.dumps({"model": model, "dim": dim, "checkpoint_sha256": weights})}
    writer = AtomicParquetWriter(path, chip_schema(dim, metadata))
    writer.write(row_columns(str(path), date(2024, 5, 1), vectors, polygons, row=(rows * 512).tolist(), col=(cols * 512).tolist(),
                             nodata_fraction=[0.0] * count, overlap=overlap, overlap_fraction=overlap.astype(np.float32)))  # fmt: skip
    return writer.commit()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """2 400 rows of 32 dims in three files: clustered vectors (60 centres), some marked overlap."""
    folder = tmp_path_factory.mktemp("search-generated")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(60, DIM))
    for k in range(3):
        vectors = (centres[rng.integers(0, 60, 800)] + 0.4 * rng.normal(size=(800, DIM))).astype(np.float32)
        write_generated(folder / f"scene{k}.parquet", vectors, (10.0 + k, 50.0), overlap=rng.random(800) < 0.05)
    return folder


def rows_of(paths: list[Path]) -> dict:
    """Every row of the files (sorted, rows in file order), read with pyarrow: ids, unit vectors, footprints."""
    ids, vectors, shapes, overlap = [], [], [], []
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    for path in sorted(paths):
        table = pq.read_table(path)
        name = str(path.parent.relative_to(common) / path.name.removesuffix(".parquet").removesuffix(".patches"))
        ids += [f"{name}:{r}:{c}" for r, c in zip(table["row"].to_pylist(), table["col"].to_pylist())]
        vectors.append(np.stack(table["embeddings"].to_numpy(zero_copy_only=False)).astype(np.float64))
        shapes += shapely.from_wkb(table["geometry"].to_pylist()).tolist()
        overlap += table["overlap"].to_pylist()
    vectors = np.concatenate(vectors)
    return {"ids": ids, "units": vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "shapes": np.array(shapes),
            "overlap": np.array(overlap)}  # fmt: skip


def shares_ground(a, b) -> bool:
    shared = shapely.intersection(a, b).area
    return shared > TOLERANCE * min(a.area, b.area)


def brute_force(rows: dict, query: np.ndarray, own: list[int], k: int) -> list[tuple[str, float]]:
    """The top k by cosine (float64), skipping rows with overlap, the query's rows and their ground,
    and any row sharing ground with one already taken."""
    scores = rows["units"] @ (query / np.linalg.norm(query))
    taken: list = [rows["shapes"][i] for i in own]
    answer = []
    for i in np.argsort(-scores, kind="stable"):
        if len(answer) == k:
            break
        if i in own or rows["overlap"][i] or any(shares_ground(rows["shapes"][i], t) for t in taken):
            continue
        answer.append((rows["ids"][i], float(scores[i])))
        taken.append(rows["shapes"][i])
    return answer


def assert_same_answer(table, expected: list[tuple[str, float]]) -> None:
    assert table["id"].to_pylist() == [i for i, _ in expected]
    np.testing.assert_allclose(table["score"].to_numpy(), [s for _, s in expected], atol=2e-6)
    assert table["rank"].to_pylist() == list(range(1, len(expected) + 1))


def assert_ground_once(table) -> None:
    shapes = shapely.from_wkb(table["geometry"].to_pylist())
    for i in range(len(shapes)):
        for j in range(i):
            assert not shares_ground(shapes[i], shapes[j]), (table["id"][i], table["id"][j])


def test_exact_search_by_id_equals_a_brute_force_cosine_on_the_demo_patches(demo):
    patches = [demo / "a" / "demo.patches.parquet"]
    rows = rows_of(patches)
    query_id = "demo:544:544"  # an aligned patch: its ground is its own
    own = rows["ids"].index(query_id)
    table = search([demo / "a"], ids=[query_id], k=10, kind="patches")
    assert_same_answer(table, brute_force(rows, rows["units"][own], [own], 10))
    assert_ground_once(table)
    assert not any(table["overlap"].to_pylist())
    assert table.column_names[:3] == ["rank", "score", "id"] and {"geometry", "date", "source_url"} <= set(table.column_names)


def test_a_point_asks_for_the_rows_covering_it_and_several_examples_average_their_unit_vectors(demo):
    rows = rows_of([demo / "a" / "demo.patches.parquet"])
    first, second = rows["ids"].index("demo:544:544"), rows["ids"].index("demo:96:800")
    centre = rows["shapes"][first].centroid
    by_point = search([demo / "a"], points=[(centre.x, centre.y)], k=5, kind="patches")
    by_id = search([demo / "a"], ids=["demo:544:544"], k=5, kind="patches")
    assert by_point["id"].to_pylist() == by_id["id"].to_pylist()
    both = search([demo / "a"], points=[(centre.x, centre.y)], ids=["demo:96:800"], k=8, kind="patches")
    expected = brute_force(rows, rows["units"][first] + rows["units"][second], [first, second], 8)
    assert_same_answer(both, expected)


def test_two_runs_of_one_place_give_each_piece_of_ground_once_and_never_the_querys(demo):
    rows = rows_of([demo / "a" / "demo.parquet", demo / "b" / "demo.parquet"])
    assert "a/demo:0:0" in rows["ids"] and "b/demo:0:0" in rows["ids"]
    table = search([demo / "a", demo / "b"], ids=["a/demo:512:0"], k=4)
    own = rows["ids"].index("a/demo:512:0")
    assert_same_answer(table, brute_force(rows, rows["units"][own], [own], 4))
    assert "b/demo:512:0" not in table["id"].to_pylist()  # the same ground in the other run
    assert_ground_once(table)
    # with --include-overlaps: every other row by score, the copy of the query's ground excepted
    everything = search([demo / "a", demo / "b"], ids=["a/demo:512:0"], k=100, include_overlaps=True)
    query_shape = rows["shapes"][own]
    expected = [i for i in np.argsort(-(rows["units"] @ rows["units"][own]), kind="stable")
                if i != own and not shares_ground(rows["shapes"][i], query_shape)]  # fmt: skip
    assert everything["id"].to_pylist() == [rows["ids"][i] for i in expected]


def test_exact_search_by_vector_equals_brute_force_and_the_index_finds_95_percent(generated, tmp_path):
    files = sorted(generated.glob("*.parquet"))
    rows = rows_of(files)
    archive = open_archive([generated])
    rng = np.random.default_rng(3)
    recalls = []
    for _ in range(20):
        query = rows["units"][rng.integers(len(rows["ids"]))] + 0.05 * rng.normal(size=DIM)
        exact = search([], vector=query.tolist(), k=10, archive=archive)
        assert_same_answer(exact, brute_force(rows, query, [], 10))
        approximate = search([], vector=query.tolist(), k=10, archive=archive, mode="index", index_folder=tmp_path / "index")
        recalls.append(len(set(exact["id"].to_pylist()) & set(approximate["id"].to_pylist())) / 10)
        assert_ground_once(approximate)
    assert np.mean(recalls) >= 0.95, recalls
    assert (tmp_path / "index" / "manifest.json").is_file()


def test_the_index_is_rebuilt_when_an_input_changes_and_reused_otherwise(generated, tmp_path):
    from clay.runtime.search.index import LanceIndex

    folder = tmp_path / "archive"
    shutil.copytree(generated, folder)
    built = LanceIndex(open_archive([folder]), tmp_path / "index")
    assert built.built_s is not None and built.indexed  # 2 400 rows: an IVF-PQ index is trained
    assert LanceIndex(open_archive([folder]), tmp_path / "index").built_s is None
    (folder / "scene2.parquet").unlink()
    again = LanceIndex(open_archive([folder]), tmp_path / "index")
    assert again.built_s is not None and again.rows == 1600


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_command_prints_a_table_and_writes_geoparquet_or_geojson(demo, tmp_path):
    result = run_cli(demo / "a", "--patches", "--id", "demo:544:544", "-k", "3", "--out", tmp_path / "top.parquet")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "date", "lon", "lat", "id"] and len(lines) == 4
    table = pq.read_table(tmp_path / "top.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and table.num_rows == 3
    outcomes = validate(tmp_path / "top.parquet")  # geoparquet-validator: conformant, the bbox covering declared
    assert "fail" not in outcomes.values() and outcomes["/conf/covering/bbox-paths"] == "pass", outcomes
    assert [line.split()[-1] for line in lines[1:]] == table["id"].to_pylist()
    assert run_cli(demo / "a", "--patches", "--id", "demo:544:544", "-k", "3", "--out", tmp_path / "top.geojson").exit_code == 0
    features = json.loads((tmp_path / "top.geojson").read_text())["features"]
    assert [f["properties"]["id"] for f in features] == table["id"].to_pylist()
    assert features[0]["geometry"]["type"] == "Polygon" and features[0]["properties"]["date"] == "2020-02-23"
    # results written into the run's folder are not rows to search later (that search said "not a clay-run output")
    folder = tmp_path / "run"
    shutil.copytree(demo / "a", folder)
    shutil.copy(tmp_path / "top.parquet", folder / "top.parquet")
    again = run_cli(folder, "--id", "demo:0:0", "-k", "2")
    assert again.exit_code == 0, again.output
    named = run_cli(folder / "top.parquet", "--id", "demo:0:0")  # named on its own: said why
    assert named.exit_code == 1 and "not a clay-run output" in named.output


def test_bad_queries_are_one_line_and_exit_1(demo, generated, tmp_path):
    other = tmp_path / "v15"
    other.mkdir()
    write_generated(other / "v15.parquet", np.ones((4, 48), np.float32), (0.0, 0.0), model="clay-v1.5")
    (tmp_path / "empty").mkdir()
    cases = {
        "lies outside every scene": [demo / "a", "--point", "10,50"],
        "the vector has 3 values; the archive's clay-v0 embeddings have 256": [demo / "a", "--vector", "1,2,3"],
        "search one model at a time": [generated, other, "--vector", "1,2"],
        "no chips files in": [tmp_path / "empty", "--id", "x:0:0"],
        "no row 'demo:1:1' in the archive": [demo / "a", "--id", "demo:1:1"],
        "nothing to search for": [demo / "a"],
    }
    for message, args in cases.items():
        result = run_cli(*args)
        assert result.exit_code == 1, (message, result.output)
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("clay-search: ")
    np.save(tmp_path / "v.npy", np.ones(255, np.float32))
    assert "have 256" in run_cli(demo / "a", "--vector", tmp_path / "v.npy").stderr
    assert run_cli(demo / "a", "--point", "nowhere").exit_code == 2  # a usage error, as click gives
    with pytest.raises(SearchError, match="search one model at a time"):
        open_archive([generated, other])
    retrained = tmp_path / "retrained"  # the same model and width from other weights: not comparable either
    retrained.mkdir()
    write_generated(retrained / "r.parquet", np.ones((4, DIM), np.float32), (0.0, 0.0), weights="9a8b")
    with pytest.raises(SearchError, match=r"clay-v0 \(32-dim, weights 0f1e\), .* is clay-v0 \(32-dim, weights 9a8b\)"):
        open_archive([generated, retrained])
    # the installed command, as a user runs it: the line and the status, no traceback
    ran = subprocess.run([shutil.which("clay-search"), str(demo / "a"), "--vector", "1,2,3"], check=False, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 1 and ran.stderr.strip().splitlines() == [
        "clay-search: the vector has 3 values; the archive's clay-v0 embeddings have 256"]


def test_exact_search_runs_without_lancedb(demo):
    """The plain install has no search extra: --mode exact needs none of it (--mode index says which
    extra to install, tests/test_architecture.py)."""
    code = (
        "import sys, importlib.abc\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lancedb', 'lance', 'torch'):\n"
        "            raise ImportError(name + ' blocked by the test')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from clay.runtime.search.cli import main\n"
        f"main([{str(demo / 'a')!r}, '--id', 'demo:0:0', '-k', '2'])\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert len(ran.stdout.strip().splitlines()) == 3 and "demo:" in ran.stdout
