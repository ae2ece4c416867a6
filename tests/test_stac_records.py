"""``clay-run --stac``: a STAC Item per scene and a Collection per output folder, with the STAC
Embedding extension (``emb:``, v0.0.1) and the Processing extension: valid against their JSON
schemas (and STAC 1.0.0 core, which the Embedding schema includes), read back by pystac, every href
resolving, and the GeoParquet files carrying the same provenance.

The schemas are copies in ``tests/data/stac-schemas`` (sources in its README): no network here.
The run: an Earth Search-style Item (1 chip, from ``tests/test_stac.py``) and the bundled demo scene
as a folder of band files (9 chips), with the demo engine, patch rows and an int8 patch raster.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import shapely
from clay.runtime.cli import DEMO_ENGINE, DEMO_SCENE
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from .test_stac import s2_item_folder

SCHEMAS = Path(__file__).resolve().parent / "data" / "stac-schemas"
EMBEDDINGS = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ITEM_ID = "S2B_48QUE_20230501_0_L2A"


def registry() -> Registry:
    """Every vendored schema under its ``$id`` (relative ``$ref``s resolve against it)."""
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append(
            (schema["$id"].rstrip("#"), Resource.from_contents(schema, default_specification=DRAFT7))
        )
    return Registry().with_resources(resources)


def validator(uri: str) -> jsonschema.Draft7Validator:
    reg = registry()
    return jsonschema.Draft7Validator(reg[uri].contents, registry=reg)


def errors(record: dict, uri: str = EMBEDDINGS) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator(uri).iter_errors(record)
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stac-out")
    item_path, _ = s2_item_folder(folder, ITEM_ID)
    out = folder / "embeddings"
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(item_path), str(DEMO_SCENE), "--engine",
                             str(DEMO_ENGINE), "--out", str(out), "--patch-embeddings", "--patch-raster", "--raster-dtype",
                             "int8", "--stac"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "clay-run: STAC: 2 Item(s) and" in result.stderr
    return out


def test_every_item_and_the_collection_validate_against_the_extensions_schemas(run):
    names = sorted(p.name for p in run.glob("*.json"))
    assert names == sorted(["T48QUE-20200223.item.json", f"{ITEM_ID}.item.json", "collection.json"])
    for path in run.glob("*.item.json"):
        item = json.loads(path.read_text())
        assert errors(item) == [] and errors(item, PROCESSING) == [], path.name
        assert item["stac_version"] == "1.0.0" and {EMBEDDINGS, PROCESSING} <= set(item["stac_extensions"])
    collection = json.loads((run / "collection.json").read_text())
    assert errors(collection) == []
    assert (collection["emb:type"], collection["emb:dimensions"], collection["data_type"]) == (
        "chip",
        256,
        "float32",
    )
    assert collection["emb:chip_layout"] == {
        "layout_type": "regular_grid",
        "chip_size": [512, 512],
        "stride": [512, 512],
    }
    assert {link["rel"] for link in collection["links"]} >= {"emb:model", "emb:source-data", "item", "root"}


def test_the_schemas_refuse_what_the_extension_forbids(run):
    """The checks can fail: emb:type is a Collection field, an Item needs an ``embeddings`` asset, a
    Collection its emb:model link, and STAC 1.0.0 core holds (a datetime)."""
    item = json.loads((run / f"{ITEM_ID}.item.json").read_text())
    broken = [copy.deepcopy(item) for _ in range(3)]
    broken[0]["properties"]["emb:type"] = "chip"
    del broken[1]["assets"]["embeddings"]
    del broken[2]["properties"]["datetime"]
    for record in broken:
        assert errors(record), record["properties"]
    collection = json.loads((run / "collection.json").read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] != "emb:model"]
    assert errors(collection)


def test_pystac_reads_them_back_and_every_href_resolves(run):
    collection = pystac.Collection.from_file(str(run / "collection.json"))
    items = {item.id: item for item in collection.get_items()}
    assert set(items) == {ITEM_ID, "T48QUE-20200223"}
    for item in items.values():
        assert item.collection_id == collection.id
        for key in ("embeddings", "patch-embeddings", "patch-raster"):
            href = Path(item.assets[key].get_absolute_href())
            assert href.is_file() and href.parent == run, (key, href)
        chips = pq.read_table(item.assets["embeddings"].get_absolute_href())
        assert item.datetime.date() == chips["date"][0].as_py()
        footprint = shapely.geometry.shape(item.geometry)
        assert all(footprint.buffer(1e-9).covers(p) for p in shapely.from_wkb(chips["geometry"].to_pylist()))
        with rasterio.open(item.assets["patch-raster"].get_absolute_href()) as src:  # int8: what GDAL applies
            quantization = item.properties["emb:quantization"]
            assert quantization["scale"] == list(src.scales) and quantization["offset"] == list(src.offsets)
            assert (
                quantization["quantized_dtype"] == "uint8" and len(quantization["scale"]) == src.count == 256
            )
    sources = {
        item.id: [link.href for link in item.links if link.rel == "emb:source-data"]
        for item in items.values()
    }
    assert sources[ITEM_ID] == [
        f"https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/{ITEM_ID}"
    ]
    assert sources["T48QUE-20200223"] == [str(Path(DEMO_SCENE).resolve())]


def test_the_geoparquet_files_carry_the_items_provenance(run):
    item = json.loads((run / f"{ITEM_ID}.item.json").read_text())
    for name in (f"{ITEM_ID}.parquet", f"{ITEM_ID}.patches.parquet"):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(run / name).metadata.items()}
        assert meta["processing:datetime"] == item["properties"]["processing:datetime"]
        assert meta["processing:version"] == item["properties"]["processing:version"]
        assert json.loads(meta["processing:software"]) == item["properties"]["processing:software"]
        assert json.loads(meta["emb:source-data"]) == [
            l["href"] for l in item["links"] if l["rel"] == "emb:source-data"
        ]
        assert meta["emb:dimensions"] == "256"
    with rasterio.open(run / f"{ITEM_ID}.patches.tif") as src:
        assert src.tags()["PROCESSING_DATETIME"] == item["properties"]["processing:datetime"]


def test_a_resumed_run_catalogues_the_scenes_it_skipped_from_their_files(run, tmp_path):
    """Records are built from the published files: a ``--resume`` run that embeds nothing writes the
    same Items, with the processing time the files recorded when they were made."""
    before = {p.name: json.loads(p.read_text()) for p in run.glob("*.item.json")}
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    for path in out.glob("*.json"):
        path.unlink()
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(DEMO_SCENE), "--engine", str(DEMO_ENGINE),
                             "--out", str(out), "--patch-embeddings", "--patch-raster", "--raster-dtype", "int8",
                             "--resume", "--stac"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0 and "is complete, skipped (--resume)" in result.stderr, result.stderr
    after = json.loads((out / "T48QUE-20200223.item.json").read_text())
    assert after["properties"] == before["T48QUE-20200223.item.json"]["properties"]
    assert after["assets"] == before["T48QUE-20200223.item.json"]["assets"]
    assert errors(json.loads((out / "collection.json").read_text())) == []


def test_a_second_run_into_the_folder_adds_to_its_collection(run, tmp_path):
    """The Collection is the folder's: a later run of one scene into it keeps the Items of the earlier
    run's scenes (it listed only its own, leaving the others' parent link pointing at a Collection
    that no longer listed them); an Item whose chip file is gone is left out."""
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(DEMO_SCENE), "--engine", str(DEMO_ENGINE),
                             "--out", str(out), "--patch-embeddings", "--patch-raster", "--raster-dtype", "int8",
                             "--resume", "--stac"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    collection = json.loads((out / "collection.json").read_text())
    listed = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert listed == sorted(f"./{p.name}" for p in run.glob("*.item.json")) and len(listed) == 2
    assert errors(collection) == []
    (out / f"{ITEM_ID}.parquet").unlink()
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(DEMO_SCENE), "--engine", str(DEMO_ENGINE),
                             "--out", str(out), "--patch-embeddings", "--patch-raster", "--raster-dtype", "int8",
                             "--resume", "--stac"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    collection = json.loads((out / "collection.json").read_text())
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == ["./T48QUE-20200223.item.json"]
