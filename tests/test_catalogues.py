"""STAC Items as catalogues publish them (issue 32, item 8): Copernicus Data Space / stactools
Sentinel-2 Items offer each band at several resolutions, bands named by an asset-level
``eo:common_name`` only, and downloaded ItemCollections whose Items' hrefs are relative to each
Item's own ``self`` link (stac-asset's layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pystac
from clay.runtime.bands import S2_BANDS
from clay.runtime.cli import DEMO_ENGINE

from .test_ray import clay_run as run
from .test_real_inputs import cosines, embeddings, preprocessing
from .test_stac import SENSED, TEN_M_BANDS, band_asset, harmonised_bands, new_item, save, write_s2_files

#: The resolutions CDSE's Sentinel-2 L2A Items offer each band at (the native one first).
RESOLUTIONS = {band: (10, 20, 60) if band in TEN_M_BANDS else (20, 60) for band in S2_BANDS}
NAME = "S2B_MSIL2A_20230501T034539_N0509_R104_T48QUE_20230501T073012"


def cdse_item(folder: Path, files: dict[str, str]) -> pystac.Item:
    """Copernicus Data Space's layout: keys ``B02_10m``, ``B02_20m``, ``B02_60m``…; the native one has the
    role ``sampling:original``, the others ``sampling:downsampled``; each its ``gsd``. The downsampled
    copies point at files that do not exist: they must never be read."""
    props = {"platform": "sentinel-2b", "constellation": "sentinel-2", "s2:processing_baseline": "05.09",
             "proj:epsg": 32648}  # fmt: skip
    item = new_item(NAME, SENSED, props, "sentinel-2-l2a", None)
    for band, resolutions in RESOLUTIONS.items():
        for k, metres in enumerate(resolutions):
            href = f"./{files[band]}" if k == 0 else f"./R{metres}m/{band}_{metres}m.tif"
            asset = band_asset(item, f"{band}_{metres}m", href, band, name=band, common=None,
                               raster={"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1})  # fmt: skip
            asset.roles = ["data", "reflectance", "sampling:original" if k == 0 else "sampling:downsampled"]
            asset.extra_fields["gsd"] = metres
    return save(item, folder / f"{NAME}.json")


def test_a_band_offered_at_several_resolutions_is_read_at_its_native_one(tmp_path, capfd):
    folder = tmp_path / "cdse"
    files = write_s2_files(folder, harmonised_bands(), add=1000)
    item = cdse_item(folder, files)
    assert run(folder / f"{NAME}.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "item") == 0
    assert run(folder, "--engine", DEMO_ENGINE, "--out", tmp_path / "folder", "--date", "2023-05-01", "--s2-offset",
               "1000") == 0  # fmt: skip
    capfd.readouterr()
    ours = pq.read_table(tmp_path / "item" / f"{item.id}.parquet")
    theirs = pq.read_table(tmp_path / "folder" / "cdse.parquet")
    assert cosines(embeddings(ours), embeddings(theirs)).min() >= 0.999999
    applied = preprocessing(ours)
    assert applied["stac"]["bands"]["B02"] == f"{item.id}:B02_10m" and applied["stac"]["bands"]["B05"] == f"{item.id}:B05_20m"
    chosen = applied["stac"]["resolutions"]
    assert chosen["B02"] == "B02_10m (sampling:original, 10 m) over B02_20m, B02_60m"
    assert chosen["B12"] == "B12_20m (sampling:original, 20 m) over B12_60m"


def test_without_roles_the_finest_resolution_wins_and_bands_may_be_named_by_an_asset_level_common_name(tmp_path, capfd):
    folder = tmp_path / "gsd"
    files = write_s2_files(folder, harmonised_bands(), add=1000)
    item = cdse_item(folder, files)
    for key, asset in item.assets.items():
        asset.roles = ["data"]  # gsd alone says which is native
        if key.startswith("B04"):
            asset.extra_fields.pop("eo:bands")  # named by an asset-level eo:common_name only (STAC 1.1 style)
            asset.extra_fields["eo:common_name"] = "red"
    save(item, folder / f"{NAME}.json")
    assert run(folder / f"{NAME}.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "item") == 0
    capfd.readouterr()
    applied = preprocessing(pq.read_table(tmp_path / "item" / f"{item.id}.parquet"))
    assert applied["stac"]["bands"]["B04"] == f"{item.id}:B04_10m"
    assert applied["stac"]["resolutions"]["B03"] == "B03_10m (finest gsd, 10 m) over B03_20m, B03_60m"


def test_a_downloaded_item_collection_resolves_hrefs_from_each_items_self_link(tmp_path, capfd):
    """stac-asset's layout: ``items.json`` beside one folder per Item, each Item's ``self`` link
    relative to the collection file, its asset hrefs relative to the Item."""
    root = tmp_path / "download"
    items = []
    for k in (1, 2):
        item_id = f"S2B_48QUE_2023050{k}_0_L2A"
        files = write_s2_files(root / item_id, harmonised_bands(seed=k))
        item = new_item(item_id, SENSED.replace(day=k), {"platform": "sentinel-2b", "earthsearch:boa_offset_applied": True},
                        "sentinel-2-l2a", None)  # fmt: skip
        for band in S2_BANDS:
            band_asset(item, band, f"./{files[band]}", band, name=band, common=None,
                       raster={"nodata": 0, "data_type": "uint16"})  # fmt: skip
        items.append(item.to_dict(include_self_link=False) | {
            "links": [{"rel": "self", "href": f"./{item_id}/{item_id}.json", "type": "application/json"}]})
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert run(root / "items.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "out") == 0, capfd.readouterr().err
    capfd.readouterr()
    for k in (1, 2):
        table = pq.read_table(tmp_path / "out" / f"S2B_48QUE_2023050{k}_0_L2A.parquet")
        assert table.num_rows == 1 and str(table["date"][0].as_py()) == f"2023-05-0{k}"
