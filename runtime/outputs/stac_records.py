"""STAC records of a run's outputs, as embedding products are now catalogued: one STAC Item per
scene and one Collection per output folder, with the STAC Embedding extension (``emb:``, proposal
v0.0.1, geo-embeddings/embeddings-stac-specification) and the Processing extension (v1.2.0).

Written as STAC 1.0.0, the core version the Embedding extension's schema refers to. Built from the
published files alone (the chip file's rows and key-value metadata, the patch raster's tags and
band scales), so a resumed run, a Ray run and ``ClayEmbedder.embed_scenes`` get the same records:
:func:`write_catalogue`. Every href is relative to the record's own file (``./<scene>.parquet``),
except the sources', which are where the scene was read from.

What goes where (the extension allows ``emb:type``, ``emb:dimensions``, ``data_type`` and
``emb:chip_layout`` on Collections only, and ``emb:quantization`` on Item properties only):

- **Collection** ``collection.json``: ``emb:type`` ``chip`` (one vector per 512 px chip, the
  ``embeddings`` asset of every Item), ``emb:dimensions``, ``data_type`` ``float32``,
  ``emb:chip_layout`` (a regular grid of the engine's chip size; with ``--edge shift`` the last
  chip of a row or column is shifted back inside the scene, ``emb:runtime_parameters`` of each Item
  says which edge mode ran), the model as an ``emb:model`` link, every scene's source as
  ``emb:source-data`` links, extents from the Items.
- **Item** ``<scene>.item.json``: footprint and bbox (the union of its chips' polygons), the sensing
  date as ``datetime``, ``processing:datetime`` / ``processing:version`` / ``processing:software``
  (when and by which versions the embeddings were made), ``emb:runtime_parameters`` (engine, bands,
  chip and patch size, preprocessing choices), ``emb:quantization`` when the patch raster is int8
  (per band scale and offset: value = code × scale + offset, code 0 nodata; it describes the
  ``patch-raster`` asset, the only quantised one), the source Items (or files) as
  ``emb:source-data`` links, and assets ``embeddings`` (the chip GeoParquet), ``patch-embeddings``
  and ``patch-raster`` where written.

:func:`provenance_metadata` gives the same provenance keys for the GeoParquet files' key-value
metadata (and the patch raster's tags).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import rasterio
import shapely

from ..metadata import EngineMetadata, package_versions
from .publish import OutputError, ScenePaths, naming, partial_path, publish

STAC_VERSION = "1.0.0"
EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
PARQUET = "application/vnd.apache.parquet"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOJSON = "application/geo+json"
COLLECTION_FILE = "collection.json"
#: Where the encoder's code and published weights are described (the ``emb:model`` link).
MODEL_PAGES = {
    "clay-v0": "https://github.com/Clay-foundation/model",
    "clay-v1.5": "https://github.com/Clay-foundation/model",
}


@functools.cache
def runtime_version() -> str:
    """This runtime's version (cached: looking installed versions up costs ~20 ms, and every scene asks)."""
    try:
        return version("clay-runtime")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    return tuple(package_versions().items())


def source_hrefs(source_url: str, applied: dict) -> list[str]:
    """Where a scene was read from: its STAC Items' sources (several with ``--combine``), else its file, folder or URL."""
    items = (applied.get("stac") or {}).get("items") or []
    return [item["source"] for item in items if item.get("source")] or [source_url]


def provenance_metadata(
    engine: EngineMetadata, source_url: str, applied: dict, when: datetime | None = None
) -> dict[str, str]:
    """The provenance keys every output file of a scene carries (GeoParquet key-value metadata; the
    patch raster's tags as ``PROCESSING_DATETIME``…), named and valued as the scene's STAC Item has
    them: ``processing:datetime`` (UTC, when the scene was embedded), ``processing:version`` (this
    runtime's), ``processing:software`` (the versions involved), ``emb:dimensions`` and
    ``emb:source-data`` (the sources' hrefs, JSON). The model: ``clay:engine``."""
    when = when or datetime.now(timezone.utc)
    software = {
        "clay-runtime": runtime_version(),
        **dict(_installed_versions()),
        **{f"engine:{k}": v for k, v in engine.versions.items()},
    }
    return {
        "processing:datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processing:version": runtime_version(),
        "processing:software": json.dumps(software),
        "emb:dimensions": str(engine.dim),
        "emb:source-data": json.dumps(source_hrefs(source_url, applied)),
    }


def _metadata(path: Path) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}


def _quantization(raster: Path) -> dict | None:
    """``emb:quantization`` of an int8 patch raster (None for float32)."""
    with rasterio.open(raster) as src:
        layout = json.loads(src.tags().get("CLAY_RASTER", "{}"))
        if layout.get("dtype") != "int8":
            return None
        return {"method": "linear (per band: value = code * scale + offset; code 0: nodata)", "original_dtype": "float32",
                "quantized_dtype": "uint8", "scale": [float(s) for s in src.scales],
                "offset": [float(o) for o in src.offsets]}  # fmt: skip


def scene_item(paths: ScenePaths, collection_id: str, runtime_parameters: dict | None = None) -> dict:
    """The STAC Item (a dict) of one scene's published files."""
    meta = _metadata(paths.chips)
    engine = json.loads(meta["clay:engine"])
    applied = json.loads(meta.get("clay:preprocessing", "{}"))
    table = pq.read_table(paths.chips, columns=["source_url", "item_id", "date", "geometry"])
    footprint = shapely.union_all(shapely.from_wkb(table["geometry"].to_pylist()))
    day = table["date"][0].as_py()
    source = table["source_url"][0].as_py()
    stem = paths.chips.name.removesuffix(".parquet")
    properties = {
        "datetime": f"{day.isoformat()}T00:00:00Z",  # the sensing date (clay-run keeps the day, not the time)
        "processing:datetime": meta.get("processing:datetime") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processing:version": meta.get("processing:version") or runtime_version(),
        "processing:software": json.loads(meta.get("processing:software") or json.dumps({"clay-runtime": runtime_version()})),
        "emb:runtime_parameters": {
            "model": engine.get("model", "clay-v0"), "model_size": engine["model_size"], "weights": engine["weights"],
            "checkpoint_sha256": engine["checkpoint_sha256"], "precision": engine["precision"], "bands": engine["bands"],
            "chip_size": engine["chip_size"], "patch_size": engine["patch_size"], "scene_crs": meta.get("clay:scene_crs"),
            **(runtime_parameters or {}), "preprocessing": applied,
        },
    }  # fmt: skip
    if table["item_id"][0].as_py():
        properties["clay:source_item"] = table["item_id"][0].as_py()
    assets = {"embeddings": {"href": f"./{paths.chips.name}", "type": PARQUET, "roles": ["data"],
                             "title": f"chip embeddings: one {engine['dim']}-d float32 vector per {engine['chip_size']} px chip (GeoParquet)"}}  # fmt: skip
    if paths.patches is not None and paths.patches.is_file():
        assets["patch-embeddings"] = {"href": f"./{paths.patches.name}", "type": PARQUET, "roles": ["data"],
                                      "title": f"patch embeddings: one vector per {engine['patch_size']} px patch (GeoParquet)"}  # fmt: skip
    if paths.raster is not None and paths.raster.is_file():
        assets["patch-raster"] = {"href": f"./{paths.raster.name}", "type": COG, "roles": ["data"],
                                  "title": f"patch embeddings as a COG: one {engine['patch_size']} px cell a pixel, one band a dimension"}  # fmt: skip
        quantization = _quantization(paths.raster)
        if quantization is not None:
            properties["emb:quantization"] = quantization
    links = [
        {"rel": rel, "href": f"./{COLLECTION_FILE}", "type": "application/json"}
        for rel in ("collection", "parent", "root")
    ]
    for href in source_hrefs(source, applied):
        links.append({"rel": "emb:source-data", "href": href, "title": "the scene the embeddings were made from",
                      **({"type": GEOJSON} if href.endswith(".json") or "/items/" in href else {})})  # fmt: skip
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": [EMBEDDINGS_EXTENSION, PROCESSING_EXTENSION],
        "id": stem, "collection": collection_id, "geometry": shapely.geometry.mapping(footprint),
        "bbox": [float(v) for v in footprint.bounds], "properties": properties, "links": links, "assets": assets,
    }  # fmt: skip


def run_collection(collection_id: str, items: list[dict], item_files: list[str], dim: int) -> dict:
    """The Collection (a dict) of a run's Items (``item_files``: their file names beside it) of ``dim``-d embeddings."""
    runtime = items[0]["properties"]["emb:runtime_parameters"]
    boxes = np.array([item["bbox"] for item in items])
    dates = sorted(item["properties"]["datetime"] for item in items)
    chip = runtime["chip_size"]
    model = runtime["model"]
    links = [{"rel": "root", "href": f"./{COLLECTION_FILE}", "type": "application/json"}]
    links += [{"rel": "item", "href": f"./{name}", "type": GEOJSON} for name in item_files]
    links.append({"rel": "emb:model", "href": MODEL_PAGES.get(model, MODEL_PAGES["clay-v0"]), "type": "text/html",
                  "title": f"{model} {runtime['model_size']} encoder: {runtime['weights']} (checkpoint sha256 "
                           f"{runtime['checkpoint_sha256'][:16]}…, {runtime['precision']})"})  # fmt: skip
    sources = dict.fromkeys(
        link["href"] for item in items for link in item["links"] if link["rel"] == "emb:source-data"
    )
    links += [
        {"rel": "emb:source-data", "href": href, "title": "a scene the embeddings were made from"}
        for href in sources
    ]
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [EMBEDDINGS_EXTENSION],
        "id": collection_id, "title": f"Clay embeddings ({model} {runtime['model_size']})",
        "description": f"Chip (and patch) embeddings of {len(items)} scene(s) made by clay-run with a {model} "
                       f"{runtime['model_size']} engine ({runtime['weights']}). The sources' licences apply.",
        "license": "various",
        "extent": {"spatial": {"bbox": [[float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
                                         float(boxes[:, 3].max())]]},
                   "temporal": {"interval": [[dates[0], dates[-1]]]}},
        "emb:type": "chip", "emb:dimensions": dim, "data_type": "float32",
        "emb:chip_layout": {"layout_type": "regular_grid", "chip_size": [chip, chip], "stride": [chip, chip]},
        "summaries": {"emb:type": ["chip"], "emb:dimensions": [dim], "data_type": ["float32"]},
        "links": links,
    }  # fmt: skip


def collection_id_for(folder: Path) -> str:
    """A Collection id from the output folder's name (letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-") or "clay-embeddings"


def _write_json(record: dict, path: Path) -> Path:
    partial = partial_path(path)
    with naming(path):
        partial.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return publish(partial, path)


def write_catalogue(scenes: list[ScenePaths], runtime_parameters: dict | None = None) -> list[Path]:
    """An Item per published scene (``<scene>.item.json`` beside its files) and a Collection per
    output folder (``collection.json``) holding that folder's Items: this call's, and those earlier
    runs wrote there whose chip file is still published (a second run into the folder adds to its
    Collection); scenes whose chip file is not published are left out. Each file is written
    atomically. Returns the files written, the Collections last. Raises
    :class:`~clay.runtime.outputs.publish.OutputError` naming a file (or a folder of several models)."""
    folders: dict[Path, list[ScenePaths]] = {}
    for paths in scenes:
        if paths.chips.is_file():
            folders.setdefault(paths.chips.parent, []).append(paths)
    written: list[Path] = []
    for folder, members in folders.items():
        cid = collection_id_for(folder)
        items, names, models = [], [], set()
        for paths in members:
            item = scene_item(paths, cid, runtime_parameters)
            engine = json.loads(_metadata(paths.chips)["clay:engine"])
            models.add(
                (
                    engine.get("model", "clay-v0"),
                    engine["model_size"],
                    engine["checkpoint_sha256"],
                    engine["dim"],
                )
            )
            name = paths.chips.name.removesuffix(".parquet") + ".item.json"
            items.append(item)
            names.append(name)
        earlier = []  # Items of earlier runs into this folder: kept in its Collection, not rewritten
        for record in sorted(folder.glob("*.item.json")):
            chips = folder / (record.name.removesuffix(".item.json") + ".parquet")
            if record.name in names or not chips.is_file():
                continue
            try:
                item = json.loads(record.read_text(encoding="utf-8"))
                engine = json.loads(_metadata(chips)["clay:engine"])
            except (OSError, ValueError, KeyError) as exc:
                raise OutputError(f"{record}: an earlier STAC Item that cannot be read back ({exc})") from None
            models.add((engine.get("model", "clay-v0"), engine["model_size"], engine["checkpoint_sha256"], engine["dim"]))
            earlier.append((item, record.name))
        if len(models) > 1:
            raise OutputError(f"{folder}: holds embeddings of {len(models)} models ({', '.join(sorted(f'{m[0]} {m[1]}' for m in models))}); "
                              "one Collection describes one model: write each model's run into its own folder")  # fmt: skip
        for item, name in zip(items, names):
            written.append(_write_json(item, folder / name))
        every = items + [item for item, _ in earlier]
        written.append(_write_json(run_collection(cid, every, names + [name for _, name in earlier], models.pop()[3]),
                                   folder / COLLECTION_FILE))  # fmt: skip
    return written
