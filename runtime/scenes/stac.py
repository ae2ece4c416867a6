"""STAC Items and ItemCollections as scenes: what a catalogue declares, used instead of guessing.

An Item says what file discovery (:mod:`clay.runtime.scenes.discovery`) otherwise guesses: which asset is which
band, when the scene was sensed (``datetime``), nodata, scale, offset, unit and data type per band
(``raster:bands``), the grid (``proj:*``), the Sentinel-2 processing baseline
(``s2:processing_baseline``) and whether an archive already removed its +1000 offset
(``earthsearch:boa_offset_applied``). Items are parsed by pystac; :func:`item_scenes` and
:func:`scene_from_items` turn them into :class:`~clay.runtime.scenes.inputs.SceneFiles` whose files are the
band assets and whose :class:`AssetFacts` hold those declarations. The scene then opens like any
other (:func:`~clay.runtime.scenes.scene.open_scene`): :func:`asset_header` puts each declaration into
the file's :class:`~clay.runtime.scenes.headers.Header` where the file is silent, refuses one that
contradicts the file, and names its source, so that units, the S2 offset convention
(:mod:`clay.runtime.scenes.units`) and the date (:mod:`clay.runtime.scenes.dates`) follow from the header as for
any file, and every note recorded in the outputs says where its value came from.

Band matching, per asset whose roles include ``data`` (or that has none): its key, then each
``eo:bands``/``bands`` entry's ``name`` and ``common_name``, which must agree. Sentinel-2 B-numbers
and common names (``blue``, ``nir08``, ``swir16``…) are taken from Sentinel-2 Items only, ``vv`` and
``vh`` from Sentinel-1 Items only (Landsat and HLS-L30 Items reuse these labels for other bands);
the DEM is ``elevation``/``dem``/``dsm``, or the ``data`` asset of a DEM Item (``cop-dem-glo-30``).
Where several assets offer a band, a single-band asset beats a multi-band one (Planetary Computer's
``visual``), a GeoTIFF beats a JPEG 2000 copy (Earth Search's ``*-jp2``), and the band at its native
resolution beats its resampled copies (Copernicus Data Space's and stactools' ``B02_10m``, ``B02_20m``,
``B02_60m``: the role ``sampling:original`` over ``sampling:downsampled``, else the finest ``gsd`` or
``proj:transform`` pixel; which was taken over which is recorded); two of the same kind are refused. Other assets (``visual``, ``scl``, ``aot``, thumbnails, metadata, bands the engine does not
take) are ignored, listed, and never read.

Relative hrefs are taken from where the Item is: its ``self`` link where that is a local path (relative
to the document it was read from: an ItemCollection downloaded with stac-asset holds Items whose
hrefs are relative to each Item's own folder), else where the Item was read (its file or URL; a
pystac object: its self link); ``s3://``, ``gs://``, ``https://`` hrefs become the GDAL paths the
runtime reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin

from ..bands import BAND_NAMES, S2_BANDS, SAR_BANDS, canonical_band_name
from ..errors import SceneError, first_line
from ..options import DEFAULT_HTTP_TIMEOUT
from ..sensors import INPUT_RULES, band_for_label
from .dates import DatedFile
from .headers import Header
from .inputs import AssetFacts, GdalPath, ItemFacts, SceneFiles, scene_path
from .remote import describe_fetch_error, fetch
from .sensing import item_sensor

#: STAC ``eo`` common names (and Earth Search's asset keys) of the Sentinel-2 bands Clay takes.
#: ``rededge`` names four bands and ``coastal``/``nir09`` none of Clay's: they match nothing.
S2_COMMON_NAMES = {
    "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
    "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12",
}  # fmt: skip
#: The asset key a DEM Item gives its elevation (Copernicus DEM, ALOS DEM on Planetary Computer).
DEM_DATA_KEY = "data"
_S2_ITEM = re.compile(r"sentinel[-_ ]?2|^s2[a-d]?_", re.IGNORECASE)
_S1_ITEM = re.compile(r"sentinel[-_ ]?1|^s1[a-d]?_", re.IGNORECASE)
_DEM_ITEM = re.compile(r"(^|[^a-z])(dem|dsm|dtm)([^a-z]|$)", re.IGNORECASE)
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
#: A resolution suffix in an asset key (``B02_10m``): the band is the rest.
_RESOLUTION_SUFFIX = re.compile(r"_\d+m$", re.IGNORECASE)


# --- reading Items ------------------------------------------------------------------------------------


def item_scenes(path: Path | GdalPath | str, http_timeout: float = DEFAULT_HTTP_TIMEOUT) -> list[SceneFiles]:
    """The scenes a STAC Item or ItemCollection (a file or an http(s) URL, fetched within
    ``http_timeout``: :func:`clay.runtime.scenes.remote.fetch`) describes: one per Item, named after
    its id. An Item that cannot be read or used is a scene whose ``problem`` is its one line
    (reported when it is opened, so that ``--keep-going`` finishes the others)."""
    path = scene_path(path)
    try:
        document = _read_document(path, http_timeout)
    except SceneError as exc:
        return [SceneFiles(path, (), label=path.stem, problem=str(exc))]
    kind = document.get("type") if isinstance(document, dict) else None
    if kind == "Feature":
        features = [document]
    elif kind == "FeatureCollection" and isinstance(document.get("features"), list):
        features = document["features"]
    else:
        what = f"a STAC {kind}" if isinstance(kind, str) else "JSON without a GeoJSON type"
        return [SceneFiles(path, (), label=path.stem, problem=f"{path}: not a STAC Item or ItemCollection ({what})")]
    scenes = []
    for k, feature in enumerate(features):
        name = feature.get("id") if isinstance(feature, dict) and isinstance(feature.get("id"), str) else None
        try:
            item = _parse_item(feature, path)
            scenes.append(_item_scene(item, path, _raw_self_href(feature)))
        except SceneError as exc:
            scenes.append(SceneFiles(path, (), label=_file_name(name or f"{path.stem}-{k}"), problem=str(exc)))
    if not scenes:
        return [SceneFiles(path, (), label=path.stem, problem=f"{path}: the ItemCollection holds no Item")]
    return scenes


def scene_from_items(items: Iterable) -> SceneFiles:
    """One scene from pystac Items (``pystac.Item`` objects, e.g. from pystac-client; relative hrefs
    from their self links): one Item's band assets, or several Items' together (an S2 item, an S1
    item and a DEM item of one place: see :func:`combine_items`)."""
    scenes = []
    for item in items:
        try:
            scenes.append(_item_scene(item, None))
        except SceneError as exc:
            scenes.append(SceneFiles(Path(item.id), (), label=_file_name(item.id), problem=str(exc)))
    if not scenes:
        raise SceneError("no STAC Item given")
    return scenes[0] if len(scenes) == 1 else combine_items(scenes)


def is_pystac_item(value) -> bool:
    """Whether ``value`` is a pystac Item (without importing pystac where nobody did)."""
    pystac = sys.modules.get("pystac")
    return pystac is not None and isinstance(value, pystac.Item)


def combine_items(scenes: list[SceneFiles]) -> SceneFiles:
    """Item scenes as one scene (``clay-run --combine``): every band asset of every Item, each Clay
    band from exactly one of them, on the grid and with the date the scene rules give (the finest
    Sentinel-2 grid; the date of the file holding the earliest engine band: S2, then S1, then the
    DEM). The scene is named after, and its rows' ``item_id`` and ``source_url`` come from, the Item
    holding the earliest band. Items only: a file scene is refused."""
    plain = [s for s in scenes if not s.assets and s.problem is None]
    if plain:
        raise SceneError(f"--combine joins STAC Items into one scene; {plain[0].path} is not one")
    if len(scenes) == 1:
        return scenes[0]
    problem = next((s.problem or s.v0_problem for s in scenes if s.problem or s.v0_problem), None)
    assets = tuple(a for s in scenes for a in s.assets)
    offered: dict[str, AssetFacts] = {}
    for asset in assets:
        for band in filter(None, asset.bands):
            if band in offered and problem is None:
                problem = f"{band} is offered by two of the Items combined: {offered[band].label} and {asset.label}"
            offered.setdefault(band, asset)
    lead = next((offered[b] for b in BAND_NAMES if b in offered), None)
    primary = next((s for s in scenes if lead is not None and lead in s.assets), scenes[0])
    return SceneFiles(primary.path, tuple(a.path for a in assets), tuple(p for s in scenes for p in s.ignored),
                      primary.label, assets, problem)  # fmt: skip


def _read_document(path: Path | GdalPath, http_timeout: float = DEFAULT_HTTP_TIMEOUT):
    """The JSON of a local file or an http(s) URL (urllib, within ``http_timeout``: pystac's own
    reader has no timeout, so a stalled catalogue would hang the run)."""
    if isinstance(path, GdalPath):
        if not path.uri.lower().startswith(("http://", "https://")):
            raise SceneError(f"{path}: STAC Items are read from local files or http(s) URLs (their assets may be "
                             "anywhere GDAL reads)")  # fmt: skip
        try:
            text = fetch(path.uri, http_timeout).decode("utf-8-sig")
        except (OSError, ValueError) as exc:  # urllib's HTTPError and URLError are OSErrors
            raise SceneError(f"{path}: cannot read this STAC Item ({describe_fetch_error(exc, http_timeout)})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SceneError(f"{path}: cannot read this STAC Item ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SceneError(f"{path}: not a STAC Item (not JSON: {first_line(exc)})") from None


def _parse_item(feature, where: Path | GdalPath):
    import pystac

    try:
        return pystac.Item.from_dict(feature, migrate=False, preserve_dict=True)
    except Exception as exc:  # noqa: BLE001 - pystac raises KeyError, TypeError, STACTypeError...
        name = feature.get("id") if isinstance(feature, dict) else None
        what = f"{where}: {name}" if isinstance(name, str) else str(where)
        raise SceneError(f"{what}: not a STAC Item ({type(exc).__name__}: {first_line(exc)})") from None


def _item_scene(item, where: Path | GdalPath | None, self_href: str | None = None) -> SceneFiles:
    """The scene of one parsed Item (``self_href``: its self link as the document wrote it): its band
    assets and what it declares about them."""
    where = _item_location(self_href, where)
    facts = _item_facts(item, where)
    v0_problem = None
    try:
        assets, ignored = _band_assets(item, facts, where)
    except SceneError as exc:  # no Clay v0 band: an Item of a Clay v1.5 sensor has its own
        sensor = item_sensor(facts)
        if sensor is None or INPUT_RULES[sensor].v0_units:
            raise
        assets, ignored = _sensor_band_assets(item, facts, where, sensor)
        v0_problem = str(exc)
    path = where if where is not None else scene_path(facts.source)
    return SceneFiles(path, tuple(a.path for a in assets), tuple(ignored), _file_name(item.id), tuple(assets),
                      v0_problem=v0_problem)  # fmt: skip


def _sensor_band_assets(item, facts: ItemFacts, where, sensor: str) -> tuple[list[AssetFacts], list[str]]:
    """The band assets of an Item of a Clay v1.5 sensor whose bands Clay v0 does not have (Landsat,
    NAIP, MODIS...): each band named by the asset key, ``name`` or ``common_name`` as that sensor's
    (:func:`clay.runtime.sensors.band_for_label`: Landsat's ``red`` is its red, not Sentinel-2's
    B04), one asset per band (a band two assets offer is refused)."""
    assets, ignored, seen = [], [], {}
    for key, asset in item.assets.items():
        roles = asset.roles or []
        entries = _band_entries(asset)
        if roles and "data" not in roles:
            ignored.append(f"{item.id}:{key}")
            continue
        bands = []
        for entry in entries:
            labels = ([key] if len(entries) == 1 else []) + [entry.get("name"), entry.get("common_name") or entry.get("eo:common_name")]
            found = {band_for_label(sensor, label) for label in labels if isinstance(label, str)} - {None}
            if len(found) > 1:
                raise SceneError(f"{item.id}: asset {key} names two {sensor} bands ({', '.join(sorted(found))})")
            bands.append(found.pop() if found else None)
        if not any(bands):
            ignored.append(f"{item.id}:{key}")
            continue
        for band in filter(None, bands):
            if band in seen:
                raise SceneError(f"{item.id}: two assets offer {sensor}'s {band}: {seen[band]} and {key}")
            seen[band] = key
        assets.append(_asset_facts(item, facts, key, asset, tuple(bands), entries, where))
    if not assets:
        raise SceneError(f"{item.id}: no asset of this STAC Item is a band of {sensor} (assets: {', '.join(item.assets) or 'none'})")
    return assets, ignored


def _raw_self_href(feature) -> str | None:
    """An Item's ``self`` href as its document wrote it (pystac makes a relative one absolute against
    the working directory, not the document)."""
    links = feature.get("links") if isinstance(feature, dict) else None
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str):
            return link["href"]
    return None


def _item_location(self_href: str | None, where: Path | GdalPath | None) -> Path | GdalPath | None:
    """Where the Item's relative hrefs start: its ``self`` link where that is a local path (a relative
    one taken from the document ``where`` it was read from), else ``where``."""
    if self_href is None or not isinstance(where, Path):
        return where
    href = self_href.removeprefix("file://")
    if "://" in href:
        return where  # a catalogue's URL: the downloaded file's own folder holds what it points at
    local = Path(href) if Path(href).is_absolute() else Path(os.path.normpath(where.parent / href))
    return local if local.parent.is_dir() else where


def _file_name(item_id: str) -> str:
    """An Item id as a file name (ids may hold a path separator)."""
    return item_id.replace("/", "_").replace(os.sep, "_")


def _item_facts(item, where: Path | GdalPath | None) -> ItemFacts:
    props = item.properties
    self_link = next((link.href for link in item.links if link.rel == "self"), None)
    if isinstance(self_link, str) and "://" not in self_link and isinstance(where, Path):
        self_link = str(where.resolve())  # a local self link, already resolved into where
    source = self_link or (str(where.resolve()) if isinstance(where, Path) else str(where) if where else None)
    if source is None:
        raise SceneError(f"{item.id}: a STAC Item without a self link; save it to a file and give its path")
    if item.datetime is not None:
        when, field_name = item.datetime, "datetime"
    elif item.common_metadata.start_datetime is not None:
        when, field_name = item.common_metadata.start_datetime, "start_datetime"
    else:
        raise SceneError(f"{item.id}: the STAC Item has neither datetime nor start_datetime; pass --date YYYY-MM-DD")
    harmonised = props.get("earthsearch:boa_offset_applied")
    if harmonised is not None and not isinstance(harmonised, bool):
        text = str(harmonised).strip().lower()
        if text not in _TRUE + _FALSE:
            raise SceneError(f"{item.id}: earthsearch:boa_offset_applied {harmonised!r} is neither true nor false")
        harmonised = text in _TRUE
    baseline = props.get("s2:processing_baseline")
    return ItemFacts(item.id, source, item.collection_id, when.date(), field_name, harmonised,
                     None if baseline is None else str(baseline), props.get("platform"), props.get("constellation"))  # fmt: skip


def _missions(item) -> tuple[bool, bool, bool]:
    """Whether the Item is Sentinel-2, Sentinel-1, a DEM: from its platform, constellation,
    collection and id (the labels B02, blue, vv mean other bands in other missions' Items)."""
    props = item.properties
    said = [str(props.get(k) or "") for k in ("platform", "constellation")] + [item.collection_id or "", item.id]
    s2 = any(_S2_ITEM.search(text) for text in said)
    s1 = any(_S1_ITEM.search(text) for text in said)
    dem = any(_DEM_ITEM.search(text) for text in (item.collection_id or "", item.id))
    return s2, s1, dem


@dataclass(frozen=True)
class _Offer:
    band: str
    key: str
    rank: tuple[int, int]  # (multi-band, JPEG 2000): lower wins
    sampling: int  # 0: sampling:original (or not said), 1: sampling:downsampled
    gsd: float  # the asset's ground sampling distance (inf: not declared)

    @property
    def order(self) -> tuple:
        return (*self.rank, self.sampling, self.gsd)


def _resolution(asset, item) -> float:
    """An asset's pixel size in metres: its ``gsd``, else its ``proj:transform``'s, else infinity."""
    gsd = asset.extra_fields.get("gsd")
    if isinstance(gsd, (int, float)) and gsd > 0:
        return float(gsd)
    transform = asset.extra_fields.get("proj:transform")
    if _numbers(transform, 6) and transform[0]:
        return abs(float(transform[0]))
    return math.inf


def _resolution_note(winner: _Offer, losers: list[_Offer]) -> str:
    """Why the native resolution was taken, for the outputs: ``B02_10m (sampling:original, 10 m) over …``."""
    why = "sampling:original" if winner.sampling < min(o.sampling for o in losers) else "finest gsd"
    size = f", {winner.gsd:g} m" if math.isfinite(winner.gsd) else ""
    return f"{winner.key} ({why}{size}) over {', '.join(o.key for o in losers)}"


def _band_assets(item, facts: ItemFacts, where) -> tuple[list[AssetFacts], list[str]]:
    """The assets the scene reads (each with the Clay bands it gives) and the labels of the others."""
    s2, s1, dem = _missions(item)
    matched: dict[str, tuple[tuple[str | None, ...], list[dict], object]] = {}
    offers: list[_Offer] = []
    ignored, refused = [], []
    for key, asset in item.assets.items():
        roles = asset.roles or []
        if roles and "data" not in roles:
            ignored.append(f"{item.id}:{key}")
            continue
        entries = _band_entries(asset)
        bands = _match_bands(item.id, key, entries, dem)
        allowed = []
        for band in bands:
            if band in S2_BANDS and not s2 or band in SAR_BANDS and not s1:
                refused.append(f"{key} ({band})")
                band = None
            allowed.append(band)
        if not any(allowed):
            ignored.append(f"{item.id}:{key}")
            continue
        jp2 = _is_jp2(key, asset)
        matched[key] = (tuple(allowed), entries, asset)
        sampling = 1 if "sampling:downsampled" in roles else 0
        offers += [_Offer(b, key, (int(len(allowed) > 1), int(jp2)), sampling, _resolution(asset, item))
                   for b in allowed if b]  # fmt: skip
    winners: dict[str, _Offer] = {}
    resampled: dict[str, list[_Offer]] = {}  # copies of the winner's kind at other resolutions
    for offer in sorted(offers, key=lambda o: o.order):
        best = winners.get(offer.band)
        if best is None:
            winners[offer.band] = offer
        elif best.order == offer.order:
            raise SceneError(f"{item.id}: two assets offer {offer.band}: {best.key} and {offer.key}")
        elif best.rank == offer.rank:
            resampled.setdefault(offer.band, []).append(offer)
    notes = {band: _resolution_note(winners[band], losers) for band, losers in resampled.items()}
    assets = []
    for key, (bands, entries, asset) in matched.items():
        kept = tuple(b if b and winners[b].key == key else None for b in bands)
        if not any(kept):
            ignored.append(f"{item.id}:{key}")  # a copy of bands other assets give (a *-jp2, visual, B02_20m)
            continue
        chosen = tuple((b, notes[b]) for b in kept if b in notes)
        assets.append(replace(_asset_facts(item, facts, key, asset, kept, entries, where), chosen=chosen))
    if not assets:
        why = f"; S2 bands are taken from Sentinel-2 Items and VV/VH from Sentinel-1 Items only, and " \
              f"{item.id} says it is neither: {', '.join(refused)}" if refused else ""  # fmt: skip
        raise SceneError(f"{item.id}: no asset of this STAC Item is a Clay band (assets: "
                         f"{', '.join(item.assets) or 'none'}){why}")  # fmt: skip
    return assets, ignored


def _band_entries(asset) -> list[dict]:
    """The asset's per-band objects: ``eo:bands`` (STAC 1.0) or ``bands`` (1.1), merged with
    ``raster:bands`` by position, over the asset-level fields STAC 1.1 allows for a single band."""
    extra = asset.extra_fields
    named = extra.get("bands") or extra.get("eo:bands") or []
    raster = extra.get("raster:bands") or []
    count = max(len(named), len(raster), 1)
    # an asset-level eo:common_name is STAC 1.1's way of naming a single-band asset's band
    common = {k: extra[k] for k in ("nodata", "data_type", "unit", "raster:scale", "raster:offset", "eo:common_name")
              if k in extra}  # fmt: skip
    entries = []
    for k in range(count):
        entry = dict(common)
        for source in (named, raster):
            if k < len(source) and isinstance(source[k], dict):
                entry.update(source[k])
        entries.append(entry)
    return entries


def _band_label(label) -> str | None:
    if not isinstance(label, str) or not label.strip():
        return None
    label = _RESOLUTION_SUFFIX.sub("", label.strip())  # B02_10m: B02 at 10 m
    return canonical_band_name(label) or S2_COMMON_NAMES.get(label.lower())


def _match_bands(item_id: str, key: str, entries: list[dict], dem_item: bool) -> tuple[str | None, ...]:
    """The Clay band of each of the asset's bands: from its key (a single-band asset), its entries'
    ``name`` and ``common_name``; every label that names a Clay band must name the same one."""
    bands = []
    for k, entry in enumerate(entries):
        labels = [("asset key", key)] if len(entries) == 1 else []
        labels += [("name", entry.get("name")), ("common_name", entry.get("common_name") or entry.get("eo:common_name"))]
        said = {(how, label, _band_label(label)) for how, label in labels}
        found = {band for _, _, band in said if band}
        if len(found) > 1:
            what = ", ".join(f"{how} {label!r} → {band}" for how, label, band in sorted(said, key=str) if band)
            raise SceneError(f"{item_id}: asset {key} names two bands ({what})")
        band = found.pop() if found else None
        if band is None and len(entries) == 1 and key.lower() == DEM_DATA_KEY and dem_item:
            band = "DEM"
        bands.append(band)
    return tuple(bands)


def _is_jp2(key: str, asset) -> bool:
    media = (asset.media_type or "").lower()
    return key.lower().endswith("-jp2") or "jp2" in media or asset.href.lower().split("?")[0].endswith(".jp2")


def _asset_facts(item, facts: ItemFacts, key: str, asset, bands, entries, where) -> AssetFacts:
    where_label = f"{item.id}: asset {key}"
    extra, props = asset.extra_fields, item.properties
    shape = extra.get("proj:shape") or props.get("proj:shape")
    transform = extra.get("proj:transform") or props.get("proj:transform")
    return AssetFacts(
        facts, key, _href_path(asset, where), bands,
        tuple(_number(e.get("scale", e.get("raster:scale")), where_label, "scale") for e in entries),
        tuple(_number(e.get("offset", e.get("raster:offset")), where_label, "offset") for e in entries),
        tuple(_number(e.get("nodata"), where_label, "nodata") for e in entries),
        tuple(e.get("unit") if isinstance(e.get("unit"), str) and e.get("unit") else None for e in entries),
        tuple(e.get("data_type") if isinstance(e.get("data_type"), str) else None for e in entries),
        _epsg(extra, props), tuple(int(v) for v in shape[:2]) if _numbers(shape, 2) else None,
        tuple(float(v) for v in transform[:6]) if _numbers(transform, 6) else None, _is_jp2(key, asset),
    )  # fmt: skip


def _numbers(value, count: int) -> bool:
    return isinstance(value, list) and len(value) >= count and all(isinstance(v, (int, float)) for v in value[:count])


def _number(value, where: str, name: str) -> float | None:
    """A raster:bands number (nodata may be "nan", "inf", "-inf")."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SceneError(f"{where}: raster:bands {name} {value!r} is not a number") from None


def _epsg(extra: dict, props: dict) -> int | None:
    for source in (extra, props):
        if isinstance(source.get("proj:epsg"), int):
            return source["proj:epsg"]
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
            return int(code[5:])
    return None


def _href_path(asset, where: Path | GdalPath | None) -> Path | GdalPath:
    """An asset's href as a local path or a GDAL path; relative hrefs from the Item's location."""
    href = asset.href.removeprefix("file://")
    absolute = "://" in href or href.startswith(("/", "\\")) or Path(href).is_absolute()
    if not absolute:
        if isinstance(where, GdalPath):
            href = urljoin(where.uri, href)
        elif where is not None:
            href = os.path.normpath(where.parent / href)
        else:
            href = asset.get_absolute_href() or href
    return scene_path(href)


# --- declarations into headers -------------------------------------------------------------------------

#: Where each kind of declaration comes from, as the recorded notes name it.
DECLARED_BY = {
    "bands": "STAC asset",
    "scale": "STAC raster:bands",
    "nodata": "STAC raster:bands",
    "unit": "STAC raster:bands",
    "harmonised": "STAC earthsearch:boa_offset_applied",
    "baseline": "STAC s2:processing_baseline",
}


def asset_header(header: Header, asset: AssetFacts) -> Header:
    """The file's header with what the Item declares about it: band names from the asset; scale,
    offset, nodata and unit where the file declares none (equal values where it does, else the Item
    is refused); data type and ``proj:*`` checked against the file; the Item's S2 offset convention
    as the tags :mod:`clay.runtime.scenes.units` reads (``earthsearch:boa_offset_applied`` for Earth
    Search's GeoTIFFs only: its ``*-jp2`` copies are the archive's originals); its date. Raises
    :class:`SceneError` naming the Item, the asset and the disagreement."""
    where = f"{asset.item.id}: asset {asset.key} ({header.path.name})"
    indexes = [i for i in range(1, header.count + 1) if i != header.alpha]
    if len(indexes) != len(asset.bands):
        raise SceneError(f"{where}: the Item declares {len(asset.bands)} band(s), the file has {len(indexes)}")
    names, scales, offsets = list(header.names), list(header.scales), list(header.offsets)
    nodata, masks, units = list(header.nodata), list(header.masks), list(header.units)
    declared: dict[str, str] = {"bands": DECLARED_BY["bands"]}
    for k, index in enumerate(indexes):
        i = index - 1
        band, own = asset.bands[k], header.names[i]
        if band and own and own != band:
            raise SceneError(f"{where}: the Item says {band}, the file's band {index} description says {own}")
        names[i] = band
        if asset.data_types[k] and asset.data_types[k].lower() != header.dtypes[i]:
            raise SceneError(f"{where}: the Item declares data type {asset.data_types[k]}, the file holds {header.dtypes[i]}")
        if asset.scales[k] is not None or asset.offsets[k] is not None:
            scale = 1.0 if asset.scales[k] is None else asset.scales[k]
            offset = 0.0 if asset.offsets[k] is None else asset.offsets[k]
            if (scales[i], offsets[i]) == (1.0, 0.0):
                if (scale, offset) != (1.0, 0.0):
                    scales[i], offsets[i], declared["scale"] = scale, offset, DECLARED_BY["scale"]
            elif not (_close(scales[i], scale) and _close(offsets[i], offset)):
                raise SceneError(f"{where}: the Item declares scale {scale:g} offset {offset:g}, the file scale "
                                 f"{scales[i]:g} offset {offsets[i]:g}")  # fmt: skip
        if asset.nodata[k] is not None:
            value = asset.nodata[k]
            if nodata[i] is None and masks[i] == "none":
                nodata[i], masks[i], declared["nodata"] = value, "nodata", DECLARED_BY["nodata"]
            elif nodata[i] is None:
                raise SceneError(f"{where}: the Item declares nodata {value:g}, the file marks invalid pixels with its "
                                 "own mask band instead")  # fmt: skip
            elif not (nodata[i] == value or math.isnan(nodata[i]) and math.isnan(value)):
                raise SceneError(f"{where}: the Item declares nodata {value:g}, the file {nodata[i]:g}")
        if asset.units[k]:
            if not units[i]:
                units[i], declared["unit"] = asset.units[k], DECLARED_BY["unit"]
            elif units[i].strip().lower() != asset.units[k].strip().lower():
                raise SceneError(f"{where}: the Item declares unit {asset.units[k]!r}, the file {units[i]!r}")
    _check_grid(header, asset, where)
    tags = {domain: dict(values) for domain, values in header.tags.items()}
    default = tags.setdefault("", {})
    if asset.item.s2_harmonised and not asset.jp2:
        default["BOA_OFFSET_APPLIED"], declared["harmonised"] = "true", DECLARED_BY["harmonised"]
    if asset.item.s2_baseline is not None:
        own = default.get("PROCESSING_BASELINE")
        if own is not None and own.strip() != asset.item.s2_baseline.strip():
            raise SceneError(f"{where}: the Item declares processing baseline {asset.item.s2_baseline}, the file {own}")
        default["PROCESSING_BASELINE"], declared["baseline"] = asset.item.s2_baseline, DECLARED_BY["baseline"]
    day = DatedFile(asset.item.date, f"STAC {asset.item.date_field} of Item {asset.item.id}", True)
    return replace(header, names=tuple(names), scales=tuple(scales), offsets=tuple(offsets), nodata=tuple(nodata),
                   masks=tuple(masks), units=tuple(units), tags=tags, declared=declared, date=day)  # fmt: skip


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def _check_grid(header: Header, asset: AssetFacts, where: str) -> None:
    """``proj:epsg``/``proj:code``, ``proj:shape`` and ``proj:transform``, where declared, against the file."""
    if asset.epsg is not None and header.crs.to_epsg() != asset.epsg:
        raise SceneError(f"{where}: the Item declares EPSG:{asset.epsg}, the file's CRS is {header.crs.to_string()}")
    if asset.shape is not None and asset.shape != (header.height, header.width):
        raise SceneError(f"{where}: the Item declares {asset.shape[0]} × {asset.shape[1]} px, the file has "
                         f"{header.height} × {header.width}")  # fmt: skip
    if asset.transform is not None:
        ours = tuple(header.transform)[:6]
        tolerance = 1e-6 * max(abs(ours[0]), abs(ours[4]), 1e-12)
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=tolerance) for a, b in zip(asset.transform, ours)):
            raise SceneError(f"{where}: the Item declares proj:transform {list(asset.transform)}, the file "
                             f"{list(ours)}")  # fmt: skip


def stac_record(scene: SceneFiles, sources: dict[str, tuple]) -> dict:
    """What the outputs record of the Items behind a scene: each Item, and the asset each band came from."""
    items: dict[str, ItemFacts] = {}
    bands, resolutions = {}, {}
    for band, (path, _) in sources.items():
        asset = scene.declared(path)
        if asset is not None:
            items.setdefault(asset.item.id, asset.item)
            bands[band] = asset.label
            resolutions.update((b, note) for b, note in asset.chosen if b == band)
    record = {
        "items": [{"id": i.id, "source": i.source, "collection": i.collection, i.date_field: str(i.date)}
                  for i in items.values()],
        "bands": bands,
    }  # fmt: skip
    if resolutions:
        record["resolutions"] = resolutions
    return record
