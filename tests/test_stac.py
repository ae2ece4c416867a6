"""STAC Items and ItemCollections as scenes, written by pystac in the layouts the public catalogues
use (Earth Search v1 ``sentinel-2-l2a``; Planetary Computer ``sentinel-2-l2a``, ``sentinel-1-rtc``,
``cop-dem-glo-30``), with small generated GeoTIFFs as their assets and local hrefs (no network).

Each Item must give what the same files give as a folder once its declarations are applied (the
same rows, cosine 1.0), the Earth Search item whose archive removed the offset the same embeddings
as the raw item with +1000, the Item's own date, one file per Item, and one line per bad Item.
Assets that must never be read (the losing ``*-jp2`` copies, ``visual``, ``scl``…) point at files
that do not exist. The demo engine (S2, int8, torch-free) except where SAR and a DEM are combined.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
from clay.runtime import ClayEmbedder, RunOptions
from clay.runtime.bands import S2_BANDS
from clay.runtime.cli import DEMO_ENGINE
from clay.runtime.errors import SceneError
from clay.runtime.scenes.discovery import discover_scenes, is_item_path
from clay.runtime.scenes.inputs import GdalPath
from clay.runtime.scenes.stac import scene_from_items
from clay.training.synthetic import make_scene_array
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from .inputs import write_stack
from .test_ray import assert_same_files, cluster  # noqa: F401 - the module's local Ray, for the --ray test
from .test_ray import clay_run as run  # clay-run in this process: its exit code
from .test_real_inputs import cosines, embeddings, preprocessing, s2_embedder  # noqa: F401 - a fixture

CRS = "EPSG:32648"
TEN_M = Affine(10, 0, 362600, 0, -10, 1987080)
TWENTY_M = Affine(20, 0, 362600, 0, -20, 1987080)
TEN_M_BANDS = ("B02", "B03", "B04", "B08")
#: Earth Search v1 asset keys of the Clay S2 bands (and their STAC common names).
ES_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
           "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}  # fmt: skip
PC_COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge", "B07": "rededge",
             "B08": "nir", "B8A": "rededge", "B11": "swir16", "B12": "swir22"}  # fmt: skip
COG = pystac.MediaType.COG
UTC = timezone.utc
SENSED = datetime(2023, 5, 1, 3, 45, 12, tzinfo=UTC)


# --- files and Items as the catalogues lay them out ------------------------------------------------------


def harmonised_bands(seed: int = 0) -> dict[str, np.ndarray]:
    """Harmonised L2A DNs (no +1000) of one 512 × 512 px (10 m) scene: 10 m bands at 512², 20 m at 256²."""
    cube = np.rint(make_scene_array(512, 512, seed)[:10]).astype(np.uint16)
    return {band: plane if band in TEN_M_BANDS else plane[::2, ::2] for band, plane in zip(S2_BANDS, cube)}


def write_s2_files(folder: Path, bands: dict[str, np.ndarray], add: int = 0, name: str = "{band}.tif") -> dict[str, str]:
    """One GeoTIFF per band (``add`` added to every DN, as baseline 04.00+ stores them), carrying only a
    TIFF DateTime a year after the sensing (a processing time): band → file name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for band, plane in bands.items():
        names[band] = name.format(band=band)
        write_stack(folder / names[band], (plane + add)[None].astype(np.uint16), TEN_M if band in TEN_M_BANDS else TWENTY_M,
                    CRS, [None], tags={"TIFFTAG_DATETIME": "2024:05:01 12:00:00"})  # fmt: skip
    return names


def footprint() -> tuple[dict, list[float]]:
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", 362600, 1987080 - 5120, 362600 + 5120, 1987080)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north]


def new_item(item_id: str, when: datetime, properties: dict, collection: str, self_link: str | None) -> pystac.Item:
    geometry, bbox = footprint()
    item = pystac.Item(item_id, geometry, bbox, when, dict(properties), collection=collection)
    if self_link:
        item.set_self_href(self_link)
    return item


def band_asset(item: pystac.Item, key: str, href: str, band: str, *, name: str, common: str | None,
               raster: dict | None, media: str = COG) -> pystac.Asset:  # fmt: skip
    """A one-band data asset with eo:bands, raster:bands (when given) and proj:shape/transform."""
    asset = pystac.Asset(href, media_type=media, roles=["data", "reflectance"] if band in S2_BANDS else ["data"])
    item.add_asset(key, asset)
    EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=name, common_name=common)]
    if raster is not None:
        RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(**raster)]
    grid = ProjectionExtension.ext(asset, add_if_missing=True)
    fine = band in TEN_M_BANDS
    grid.shape, grid.transform = ([512, 512], list(TEN_M)[:6]) if fine else ([256, 256], list(TWENTY_M)[:6])
    return asset


def other_assets(item: pystac.Item, keys: dict[str, list[str]]) -> None:
    """Assets that are not Clay bands, pointing at files that do not exist (never read)."""
    for key, roles in keys.items():
        item.add_asset(key, pystac.Asset(f"./{key}.tif", media_type=COG, roles=roles))


def earth_search_item(folder: Path, item_id: str, files: dict[str, str], *, harmonised: bool, baseline: str = "05.09",
                      when: datetime = SENSED, raster: dict | None = None) -> pystac.Item:  # fmt: skip
    """Earth Search v1 ``sentinel-2-l2a``: keys blue…swir22, raster:bands scale 1e-4 offset −0.1 on every
    band whatever the archive did, ``earthsearch:boa_offset_applied``, a ``*-jp2`` copy of each band."""
    props = {"platform": "sentinel-2b", "constellation": "sentinel-2", "s2:processing_baseline": baseline,
             "earthsearch:boa_offset_applied": harmonised, "proj:epsg": 32648}  # fmt: skip
    item = new_item(item_id, when, props, "sentinel-2-l2a",
                    f"https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/{item_id}")  # fmt: skip
    declared = raster or {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}
    for band, key in ES_KEYS.items():
        band_asset(item, key, f"./{files[band]}", band, name=key, common=key, raster=declared)
        band_asset(item, f"{key}-jp2", f"./jp2/{band}.jp2", band, name=key, common=key, raster=declared,
                   media=pystac.MediaType.JPEG2000)  # fmt: skip
    item.add_asset("coastal", pystac.Asset("./B01.tif", media_type=COG, roles=["data"],
                                          extra_fields={"eo:bands": [{"name": "coastal", "common_name": "coastal"}]}))  # fmt: skip
    other_assets(item, {"visual": ["visual"], "scl": ["data"], "aot": ["data"], "thumbnail": ["thumbnail"],
                        "granule_metadata": ["metadata"]})  # fmt: skip
    return save(item, folder / f"{item_id}.json")


def planetary_computer_item(folder: Path, item_id: str, files: dict[str, str], *, baseline: str) -> pystac.Item:
    """Planetary Computer ``sentinel-2-l2a``: keys B02…B12 with eo:bands name and common_name (``rededge``
    for four bands), no raster:bands, ``s2:processing_baseline``, a multi-band ``visual`` data asset."""
    props = {"platform": "Sentinel-2B", "constellation": "Sentinel 2", "s2:processing_baseline": baseline,
             "s2:mgrs_tile": "48QUE", "proj:epsg": 32648}  # fmt: skip
    item = new_item(item_id, SENSED, props, "sentinel-2-l2a",
                    f"https://planetarycomputer.microsoft.com/api/stac/v1/collections/sentinel-2-l2a/items/{item_id}")  # fmt: skip
    for band in S2_BANDS:
        band_asset(item, band, f"./{files[band]}", band, name=band, common=PC_COMMON[band], raster=None)
    visual = pystac.Asset("./TCI_10m.tif", media_type=COG, roles=["data"])
    item.add_asset("visual", visual)
    EOExtension.ext(visual).bands = [Band.create(name=b, common_name=PC_COMMON[b]) for b in ("B04", "B03", "B02")]
    other_assets(item, {"AOT": ["data"], "SCL": ["data"], "WVP": ["data"], "preview": ["thumbnail"],
                        "safe-manifest": ["metadata"]})  # fmt: skip
    return save(item, folder / f"{item_id}.json")


def save(item: pystac.Item, path: Path) -> pystac.Item:
    item.save_object(include_self_link=item.get_self_href() is not None, dest_href=str(path))
    return item


def s2_item_folder(tmp_path: Path, name: str, seed: int = 0, *, harmonised: bool = True, add: int = 0,
                   baseline: str = "05.09") -> tuple[Path, pystac.Item]:  # fmt: skip
    """An Earth Search item file beside its band files (B02.tif…, as Earth Search names them)."""
    folder = tmp_path / name
    files = write_s2_files(folder, harmonised_bands(seed), add)
    item = earth_search_item(folder, name, files, harmonised=harmonised, baseline=baseline)
    return folder / f"{name}.json", item


# --- an Item is its files, declared ------------------------------------------------------------------------


def test_an_earth_search_item_gives_what_its_files_give_as_a_folder(tmp_path, capfd):
    """Earth Search's COGs are harmonised (boa_offset_applied) yet every band still declares offset −0.1:
    applied again, every DN would lose 1000. The item's date beats the files' TIFF DateTime."""
    item_path, item = s2_item_folder(tmp_path, "S2B_48QUE_20230501_0_L2A")
    assert run(item_path, "--engine", DEMO_ENGINE, "--out", tmp_path / "item") == 0
    err = capfd.readouterr().err
    assert run(item_path.parent, "--engine", DEMO_ENGINE, "--out", tmp_path / "folder", "--date", "2023-05-01") == 0
    capfd.readouterr()
    ours = pq.read_table(tmp_path / "item" / f"{item.id}.parquet")
    theirs = pq.read_table(tmp_path / "folder" / f"{item.id}.parquet")
    assert ours.num_rows == theirs.num_rows == 1 and ours["geometry"].equals(theirs["geometry"])
    assert cosines(embeddings(ours), embeddings(theirs)).min() >= 0.999999
    assert ours["date"].to_pylist() == [date(2023, 5, 1)]
    assert ours["item_id"].to_pylist() == [item.id] and theirs["item_id"].to_pylist() == [None]
    assert ours["source_url"].to_pylist() == [item.get_self_href()]
    applied = preprocessing(ours)
    assert list(applied["units"]) == [("offset already removed (STAC earthsearch:boa_offset_applied); STAC raster:bands "
                                       "offset -0.1 not applied again")]  # fmt: skip
    assert applied["date"]["source"] == f"STAC datetime of Item {item.id}"
    assert applied["stac"]["bands"]["B02"] == f"{item.id}:blue" and applied["stac"]["bands"]["B8A"] == f"{item.id}:nir08"
    assert applied["stac"]["items"] == [{"id": item.id, "source": item.get_self_href(), "collection": "sentinel-2-l2a",
                                         "datetime": "2023-05-01"}]  # fmt: skip
    assert applied["invalid_pixels"] == {"nodata value 0 (STAC raster:bands); 0 (L2A NO_DATA)": list(S2_BANDS)}
    assert applied["grid"]["file"] == "B02.tif"
    # the jp2 copies, visual, scl, aot, the thumbnail, metadata and the non-Clay B01 are listed once (and never read)
    listed = [line for line in err.splitlines() if "not bands of the engine" in line]
    assert len(listed) == 1 and f"ignored 16 STAC asset(s) that are not bands of the engine: {item.id}: coastal, " in listed[0]
    others = ["coastal", "visual", "scl", "aot", "thumbnail", "granule_metadata"] + [f"{k}-jp2" for k in ES_KEYS.values()]
    assert sorted(applied["ignored_files"]) == sorted(f"{item.id}:{key}" for key in others)


def test_the_offset_conventions_of_both_catalogues_give_the_same_embeddings(s2_embedder, tmp_path):  # noqa: F811
    """The same harmonised DNs, stored as each catalogue stores them: Earth Search with the offset removed
    (its flag), Earth Search raw (+1000, flag false, baseline 05.09), Planetary Computer raw (+1000, keys
    B02…, only s2:processing_baseline), and an old-baseline Earth Search item that still declares −0.1."""
    bands = harmonised_bands()
    made = {}
    for name, add, harmonised, baseline in (("es_harmonised", 0, True, "05.09"), ("es_raw", 1000, False, "05.09"),
                                            ("es_old", 0, False, "02.14")):  # fmt: skip
        folder = tmp_path / name
        made[name] = earth_search_item(folder, name, write_s2_files(folder, bands, add), harmonised=harmonised,
                                       baseline=baseline)  # fmt: skip
    folder = tmp_path / "pc"
    files = write_s2_files(folder, bands, 1000, "T48QUE_20230501T033539_{band}_10m.tif")
    made["pc"] = planetary_computer_item(folder, "S2B_MSIL2A_20230501T033539_R061_T48QUE_20230502T120000", files,
                                         baseline="05.09")  # fmt: skip
    loaded = {name: pystac.Item.from_file(str(tmp_path / name / f"{item.id}.json")) for name, item in made.items()}
    tables = {name: s2_embedder.embed_scene(item) for name, item in loaded.items()}  # pystac objects, through the API
    reference = embeddings(tables["es_harmonised"])
    for name, table in tables.items():
        assert cosines(embeddings(table), reference).min() >= 0.999999, name
    notes = {name: list(preprocessing(table)["units"]) for name, table in tables.items()}
    assert notes["es_raw"] == ["STAC raster:bands scale 0.0001 offset -0.1: DN * 1 -1000"]
    assert notes["pc"] == ["processing baseline 05.09 (STAC s2:processing_baseline): DN -1000"]
    assert notes["es_old"] == [("STAC raster:bands scale 0.0001 offset -0.1; offset not applied: processing baseline "
                                "02.14 (STAC s2:processing_baseline) predates it: DN * 1")]  # fmt: skip
    assert preprocessing(tables["pc"])["stac"]["bands"]["B8A"].endswith(":B8A")  # its common_name 'rededge' names no band
    opened = s2_embedder.open_scene(loaded["es_old"])
    assert len(opened.warnings) == 1 and "02.14" in opened.warnings[0] and "--s2-offset 1000" in opened.warnings[0]
    # --s2-offset still overrides every declaration
    forced = s2_embedder.embed_scene(tmp_path / "es_raw" / "es_raw.json", RunOptions(s2_offset=0))  # a path, too
    assert cosines(embeddings(forced), reference).min() < 0.999


def test_an_item_that_says_the_offset_is_in_dns_that_lack_it_is_refused(s2_embedder, tmp_path):  # noqa: F811
    """Earth Search items with boa_offset_applied false whose COGs were harmonised all the same
    (Element84/earth-search#66, #71): B02 of a dark vegetated scene, offset removed, is mostly
    negative reflectance. With the flag right the same DNs embed."""
    dark = {band: plane // 6 for band, plane in harmonised_bands().items()}  # blue ~200 DN: forest, water
    files = write_s2_files(tmp_path / "wrong", dark)
    earth_search_item(tmp_path / "wrong", "wrong", files, harmonised=False, baseline="04.00")
    with pytest.raises(SceneError, match=r"B02.tif: B02 is mostly below the \+1000 offset its metadata declares .*"
                                         r"pass --s2-offset 0"):  # fmt: skip
        s2_embedder.embed_scene(tmp_path / "wrong" / "wrong.json")
    right = earth_search_item(tmp_path / "wrong", "right", files, harmonised=True, baseline="04.00")
    assert s2_embedder.embed_scene(tmp_path / "wrong" / f"{right.id}.json").num_rows == 1


def test_an_item_collection_is_one_file_per_item_and_a_broken_item_fails_alone(tmp_path, capfd):
    folder = tmp_path / "items"
    files = write_s2_files(folder, harmonised_bands())
    items = [earth_search_item(folder, f"S2B_48QUE_2023050{k}_0_L2A", files, harmonised=True,
                               when=SENSED.replace(day=k)) for k in (1, 2, 3)]  # fmt: skip
    pystac.ItemCollection(items).save_object(str(folder / "search.json"))  # relative hrefs: from its folder
    assert run(folder / "search.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "out") == 0
    capfd.readouterr()
    for k, item in enumerate(items, start=1):
        assert pq.read_table(tmp_path / "out" / f"{item.id}.parquet")["date"].to_pylist() == [date(2023, 5, k)]
    items[1].assets["red"].href = "./missing/B04.tif"  # an asset that cannot be read
    pystac.ItemCollection(items).save_object(str(folder / "broken.json"))
    code = run(folder / "broken.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "again", "--keep-going")
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "again").glob("*.parquet")) == [f"{items[0].id}.parquet", f"{items[2].id}.parquet"]
    failed = err[err.index("1 scene(s) failed:"):].strip().splitlines()[1:]
    assert failed == [f"clay-run:   {items[1].id}: {items[1].id}: asset red: {folder / 'missing' / 'B04.tif'}: no such file"]


def test_bad_items_are_one_line_each_and_the_others_finish(tmp_path, capfd):
    good, _ = s2_item_folder(tmp_path, "good")
    (tmp_path / "broken.json").write_text('{"type": "Feature", "id": ')
    pystac.Catalog("catalog", "not an item").save_object(include_self_link=False, dest_href=str(tmp_path / "catalog.json"))
    landsat = new_item("LC08_L2SP_129048_20230501_02_T1", SENSED, {"platform": "landsat-8"}, "landsat-c2-l2", None)
    for key in ("blue", "green", "red", "nir08", "swir16", "swir22"):
        landsat.add_asset(key, pystac.Asset(f"./{key}.tif", media_type=COG, roles=["data"]))
    save(landsat, tmp_path / "landsat.json")
    files = write_s2_files(tmp_path / "int16", harmonised_bands())
    earth_search_item(tmp_path / "int16", "int16", files, harmonised=True,
                      raster={"nodata": 0, "data_type": "int16", "scale": 0.0001, "offset": -0.1})  # fmt: skip
    corrupt = tmp_path / "corrupt"
    files = write_s2_files(corrupt, harmonised_bands())
    (corrupt / files["B03"]).write_bytes(b"II*\0 not a tiff")
    earth_search_item(corrupt, "corrupt", files, harmonised=True)
    inputs = [good, tmp_path / "broken.json", tmp_path / "catalog.json", tmp_path / "landsat.json",
              tmp_path / "int16" / "int16.json", corrupt / "corrupt.json"]  # fmt: skip
    code = run(*inputs, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--keep-going")
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [p.name for p in (tmp_path / "out").glob("*.parquet")] == ["good.parquet"]
    failed = err[err.index("5 scene(s) failed:"):].strip().splitlines()[1:]
    expected = {
        "broken": f"{tmp_path / 'broken.json'}: not a STAC Item (not JSON: ",
        "catalog": f"{tmp_path / 'catalog.json'}: not a STAC Item or ItemCollection (a STAC Catalog)",
        "LC08_L2SP_129048_20230501_02_T1": "no asset of this STAC Item is a Clay band (assets: blue, green, red, nir08, "
                                           "swir16, swir22); S2 bands are taken from Sentinel-2 Items",
        "int16": "int16: asset blue (B02.tif): the Item declares data type int16, the file holds uint16",
        "corrupt": f"corrupt: asset green: {corrupt / 'B03.tif'}: not a readable GeoTIFF (",
    }
    assert len(failed) == len(expected)
    for line in failed:
        name, reason = line.removeprefix("clay-run:   ").split(": ", 1)
        assert expected[name] in reason, line


# --- several Items, one scene ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_bands_engine(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="an S2 + SAR + DEM engine is exported with the [export] extra")
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("all-bands")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=("rgb", "rededge", "nir", "swir", "sar", "dem"),
                                   check=False), log=lambda _: None)  # fmt: skip
    return out / "clay.onnx"


def sentinel1_rtc_item(folder: Path) -> pystac.Item:
    """Planetary Computer ``sentinel-1-rtc``: vv/vh float32 linear gamma0, raster:bands nodata −32768,
    sensed four days before the S2 scene."""
    rng = np.random.default_rng(5)
    props = {"platform": "SENTINEL-1A", "constellation": "Sentinel-1", "sar:polarizations": ["VV", "VH"],
             "sar:instrument_mode": "IW", "proj:epsg": 32648}  # fmt: skip
    when = datetime(2023, 4, 27, 11, 10, 30, tzinfo=UTC)
    item = new_item("S1A_IW_GRDH_1SDV_20230427T111030_20230427T111055_048270_05CE4A_rtc", when, props,
                    "sentinel-1-rtc", None)  # fmt: skip
    for key, level in (("vh", 0.02), ("vv", 0.1)):
        plane = rng.gamma(2.0, level / 2, (512, 512)).astype(np.float32)
        plane[:40] = -32768  # outside the swath
        write_stack(folder / f"{key.upper()}.tif", plane[None], TEN_M, CRS, [None], nodata=-32768)
        asset = pystac.Asset(f"./{key.upper()}.tif", media_type=COG, roles=["data"])
        item.add_asset(key, asset)
        RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(nodata=-32768, data_type="float32")]
    other_assets(item, {"rendered_preview": ["overview"], "tilejson": ["tiles"]})
    return save(item, folder / "s1.json")


def copernicus_dem_item(folder: Path) -> pystac.Item:
    """Planetary Computer ``cop-dem-glo-30``: one ``data`` asset, 1″ in EPSG:4326, unit "meter"."""
    step = 1 / 3600
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", 362000, 1981000, 368400, 1987700)
    width, height = int((east - west) / step) + 1, int((north - south) / step) + 1
    dem = (150 + 40 * np.sin(np.arange(width) / 17)[None] * np.cos(np.arange(height) / 23)[:, None]).astype(np.float32)
    write_stack(folder / "DEM.tif", dem[None], Affine(step, 0, west, 0, -step, north), "EPSG:4326", [None])
    item = new_item("Copernicus_DSM_COG_10_N17_00_E103_00_DEM", datetime(2021, 4, 22, tzinfo=UTC),
                    {"platform": "TanDEM-X", "gsd": 30, "proj:epsg": 4326}, "cop-dem-glo-30", None)  # fmt: skip
    asset = pystac.Asset("./DEM.tif", media_type=COG, roles=["data"])
    item.add_asset("data", asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(data_type="float32", unit="meter")]
    return save(item, folder / "dem.json")


def test_an_s2_an_s1_and_a_dem_item_combine_into_the_scene_their_files_make(all_bands_engine, tmp_path, capfd):
    """--combine: the S2 item's grid (10 m UTM) and date, the S1 item's nodata, the DEM item's unit; the
    same rows as the same files as one folder."""
    folder = tmp_path / "place"
    s2 = earth_search_item(folder, "S2B_48QUE_20230501_0_L2A", write_s2_files(folder, harmonised_bands()), harmonised=True)
    s1, dem = sentinel1_rtc_item(folder), copernicus_dem_item(folder)
    paths = [folder / "dem.json", folder / "s1.json", folder / f"{s2.id}.json"]  # in any order
    assert run(*paths, "--combine", "--engine", all_bands_engine, "--out", tmp_path / "items") == 0
    capfd.readouterr()
    assert [p.name for p in (tmp_path / "items").glob("*.parquet")] == [f"{s2.id}.parquet"]
    assert run(folder, "--engine", all_bands_engine, "--out", tmp_path / "folder", "--date", "2023-05-01") == 0
    capfd.readouterr()
    ours, theirs = pq.read_table(tmp_path / "items" / f"{s2.id}.parquet"), pq.read_table(tmp_path / "folder" / "place.parquet")
    assert ours.num_rows == theirs.num_rows == 1 and ours["geometry"].equals(theirs["geometry"])
    assert cosines(embeddings(ours), embeddings(theirs)).min() >= 0.999999
    assert ours["item_id"].to_pylist() == [s2.id] and ours["date"].to_pylist() == [date(2023, 5, 1)]
    applied = preprocessing(ours)
    assert applied["grid"]["file"] == "B02.tif" and applied["grid"]["rule"] == "finest file holding Sentinel-2 bands"
    assert applied["date"]["files"]["DEM.tif"].startswith("2021-04-22 (STAC datetime of Item Copernicus_DSM")
    assert applied["stac"]["bands"]["VV"] == f"{s1.id}:vv" and applied["stac"]["bands"]["DEM"] == f"{dem.id}:data"
    assert {i["id"] for i in applied["stac"]["items"]} == {s2.id, s1.id, dem.id}
    assert applied["invalid_pixels"]["nodata value -32768"] == ["VH", "VV"]  # the file's own, which the Item's matches
    # the same through the API, from pystac objects
    with ClayEmbedder(all_bands_engine) as embedder:
        table = embedder.embed_scene(scene_from_items([pystac.Item.from_file(str(p)) for p in paths]))
    assert cosines(embeddings(table), embeddings(ours)).min() >= 0.999999
    # two Items offering one band cannot be combined
    other = earth_search_item(tmp_path / "other", "S2A_48QUE_20230506_0_L2A", write_s2_files(tmp_path / "other", harmonised_bands(1)),
                              harmonised=True)  # fmt: skip
    (scene,) = discover_scenes([folder / f"{s2.id}.json", tmp_path / "other" / f"{other.id}.json"], combine=True)
    assert scene.problem == f"B02 is offered by two of the Items combined: {s2.id}:blue and {other.id}:blue"


# --- discovery, matching, hrefs ---------------------------------------------------------------------------------


def test_band_assets_follow_the_documented_order(tmp_path):
    folder = tmp_path / "es"
    item = earth_search_item(folder, "S2B_48QUE_20230501_0_L2A", {b: f"{b}.tif" for b in S2_BANDS}, harmonised=True)
    (scene,) = discover_scenes([folder / f"{item.id}.json"])
    assert scene.name == item.id and scene.problem is None
    assert {a.key: a.bands for a in scene.assets} == {key: (band,) for band, key in ES_KEYS.items()}  # COGs, not *-jp2
    assert scene.files == tuple(folder / f"{b}.tif" for b in ES_KEYS)  # hrefs relative to the Item
    assert set(scene.ignored) == {f"{item.id}:{k}" for k in ["coastal", "visual", "scl", "aot", "thumbnail",
                                                              "granule_metadata"] + [f"{k}-jp2" for k in ES_KEYS.values()]}  # fmt: skip
    pc = planetary_computer_item(tmp_path / "pc", "S2B_MSIL2A_X", {b: f"{b}.tif" for b in S2_BANDS}, baseline="05.09")
    scene = scene_from_items([pc])
    assert {a.key for a in scene.assets} == set(S2_BANDS) and f"{pc.id}:visual" in scene.ignored  # multi-band loses
    twice = pc.clone()
    twice.add_asset("B02-copy", twice.assets["B02"].clone())
    assert scene_from_items([twice]).problem == f"{pc.id}: two assets offer B02: B02 and B02-copy"
    dem = copernicus_dem_item(tmp_path)
    assert "a STAC Item without a self link" in scene_from_items([dem]).problem  # hrefs and source_url need one
    dem = pystac.Item.from_file(str(tmp_path / "dem.json"))
    assert scene_from_items([dem]).assets[0].bands == ("DEM",)  # the data asset of a DEM item
    not_dem = dem.clone()
    not_dem.id, not_dem.collection_id = "some-mosaic", "mosaics"
    assert "no asset of this STAC Item is a Clay band" in scene_from_items([not_dem]).problem
    confused = pc.clone()
    EOExtension.ext(confused.assets["B02"]).bands = [Band.create(name="B02", common_name="green")]
    assert scene_from_items([confused]).problem == (f"{pc.id}: asset B02 names two bands (asset key 'B02' → B02, "
                                                    "common_name 'green' → B03, name 'B02' → B02)")  # fmt: skip


def test_hrefs_become_local_or_gdal_paths_and_json_never_reaches_gdal(s2_embedder, tmp_path):  # noqa: F811
    item = new_item("S2B_48QUE_20230501_0_L2A", SENSED, {"platform": "sentinel-2b"}, "sentinel-2-l2a", None)
    hrefs = {"blue": "s3://sentinel-cogs/48/Q/UE/B02.tif", "green": "gs://bucket/B03.tif",
             "red": "https://sentinel-cogs.s3.us-west-2.amazonaws.com/48/Q/UE/B04.tif", "nir": "sub/B08.tif",
             "nir08": str(tmp_path / "abs" / "B8A.tif")}  # fmt: skip
    for key, href in hrefs.items():
        item.add_asset(key, pystac.Asset(href, media_type=COG, roles=["data"]))
    save(item, tmp_path / "item.json")
    (scene,) = discover_scenes([tmp_path / "item.json"])
    paths = {a.key: a.path for a in scene.assets}
    assert paths["blue"] == GdalPath("s3://sentinel-cogs/48/Q/UE/B02.tif", "/vsis3/sentinel-cogs/48/Q/UE/B02.tif")
    assert paths["green"].gdal == "/vsigs/bucket/B03.tif" and paths["red"].gdal == f"/vsicurl/{hrefs['red']}"
    assert paths["nir"] == tmp_path / "sub" / "B08.tif" and paths["nir08"] == tmp_path / "abs" / "B8A.tif"
    # an Item read from a URL: relative hrefs from the URL (no network: only the hrefs are resolved here)
    from clay.runtime.scenes.stac import _item_scene

    remote = GdalPath.parse("https://example.org/stac/items/item.json")
    assert _item_scene(item, remote).declared(GdalPath.parse("https://example.org/stac/items/sub/B08.tif")) is not None
    assert is_item_path(GdalPath.parse("https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/X"))
    assert not is_item_path(GdalPath.parse("https://host/scene.tif"))
    with pytest.raises(SceneError, match="absent.json: cannot read this STAC Item"):  # a .json never reaches GDAL
        s2_embedder.open_scene(tmp_path / "absent.json")


def test_items_on_ray_give_the_files_of_the_single_process_run(cluster, tmp_path, capfd):  # noqa: F811 - the fixture
    folder = tmp_path / "items"
    files = write_s2_files(folder, harmonised_bands())
    items = [earth_search_item(folder, f"S2B_48QUE_2023050{k}_0_L2A", files, harmonised=True,
                               when=SENSED.replace(day=k)) for k in (1, 2)]  # fmt: skip
    pystac.ItemCollection(items).save_object(str(folder / "search.json"))
    assert run(folder / "search.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "here") == 0
    assert run(folder / "search.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "ray", "--ray") == 0, capfd.readouterr().err
    assert_same_files(tmp_path / "ray", tmp_path / "here", [item.id for item in items])
    assert pq.read_table(tmp_path / "ray" / f"{items[1].id}.parquet")["item_id"].to_pylist() == [items[1].id]


def test_items_are_lines_of_a_manifest_and_a_broken_feature_is_a_scene_of_its_own(tmp_path):
    folder = tmp_path / "es"
    items = [earth_search_item(folder, name, {b: f"{b}.tif" for b in S2_BANDS}, harmonised=True) for name in ("a", "b")]
    (tmp_path / "items.txt").write_text("# two Items\nes/a.json\n\nes/b.json\n")
    assert [s.name for s in discover_scenes([tmp_path / "items.txt"])] == ["a", "b"]
    features = [item.to_dict() for item in items]
    del features[0]["properties"]["datetime"]  # neither datetime nor start/end: not a valid Item
    (folder / "mixed.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    broken, good = discover_scenes([folder / "mixed.json"])
    assert broken.name == "a" and broken.problem.startswith(f"{folder / 'mixed.json'}: a: not a STAC Item (")
    assert good.name == "b" and good.problem is None and len(good.assets) == len(S2_BANDS)


# --- Items over http(s), as catalogues serve them ------------------------------------------------------------


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 by ``tests.range_server`` for the test's duration: (folder, base URL).
    Loopback is kept off any proxy the environment names (urllib and GDAL's curl honour no_proxy)."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "tests.range_server", str(root)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parent.parent)  # fmt: skip
    try:
        ready = select.select([server.stdout], [], [], 30)[0]
        port = server.stdout.readline().strip() if ready else ""
        assert port.isdigit(), f"the test's file server did not start within 30 s (exit code {server.poll()})"
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        server.stdout.close()


def test_an_item_url_with_http_assets_gives_what_the_local_item_gives(tmp_path, served, capfd):
    """Earth Search serves Items at https URLs whose assets are absolute https hrefs to COGs: the Item is
    read with pystac (urllib), the assets by GDAL over /vsicurl/, by range. A missing Item is one line."""
    root, base = served
    item_path, item = s2_item_folder(tmp_path, "S2B_48QUE_20230501_0_L2A")
    shutil.copytree(item_path.parent, root / item.id)
    url = f"{base}/{item.id}/{item.id}.json"
    remote = pystac.Item.from_file(str(item_path))
    for asset in remote.assets.values():  # absolute, as Earth Search writes them
        asset.href = f"{base}/{item.id}/{asset.href.removeprefix('./')}"
    remote.set_self_href(url)
    remote.save_object(include_self_link=True, dest_href=str(root / item.id / f"{item.id}.json"))
    assert run(url, "--engine", DEMO_ENGINE, "--out", tmp_path / "remote") == 0
    assert run(item_path, "--engine", DEMO_ENGINE, "--out", tmp_path / "local") == 0
    capfd.readouterr()
    ours = pq.read_table(tmp_path / "remote" / f"{item.id}.parquet")
    theirs = pq.read_table(tmp_path / "local" / f"{item.id}.parquet")
    assert ours.num_rows == theirs.num_rows == 1 and ours["geometry"].equals(theirs["geometry"])
    assert np.array_equal(embeddings(ours), embeddings(theirs))
    assert ours["source_url"].to_pylist() == [url] and ours["date"].to_pylist() == [date(2023, 5, 1)]
    assert preprocessing(ours)["units"] == preprocessing(theirs)["units"]
    assert preprocessing(ours)["stac"]["items"][0]["source"] == url
    missing = f"{base}/{item.id}/nothing.json"
    assert run(missing, "--engine", DEMO_ENGINE, "--out", tmp_path / "missing") != 0
    err = capfd.readouterr().err
    assert f"{missing}: cannot read this STAC Item (HTTP 404 Not Found: no such file on the server)" in err
    assert "Traceback" not in err
