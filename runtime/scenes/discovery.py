"""Scenes found among what the user pointed at: paths, folders, GDAL URIs, manifests and STAC Items.

The one place that decides what a command-line argument is: it uses file headers
(:mod:`~clay.runtime.scenes.headers`) to tell per-band files from stacks and STAC
(:mod:`~clay.runtime.scenes.stac`) for Items, and neither of those imports it back.
"""

from __future__ import annotations

from pathlib import Path

from ..bands import canonical_band_name
from ..errors import SceneError
from ..options import DEFAULT_HTTP_TIMEOUT
from ..sensors import labels_any_sensor
from .headers import band_count, names_clay_bands
from .inputs import GdalPath, SceneFiles, scene_path
from .products import band_label, safe_resolution
from .remote import http_env
from .stac import combine_items, item_scenes

#: GeoTIFFs, and JPEG 2000 for the images of Sentinel-2 SAFE products (read by GDAL's OpenJPEG driver).
SCENE_SUFFIXES = (".tif", ".tiff", ".jp2")
MANIFEST_SUFFIX = ".txt"
#: STAC Items and ItemCollections (GeoJSON): read as such, never handed to GDAL, whose STAC drivers
#: would open them as rasters without a CRS.
ITEM_SUFFIXES = (".json", ".geojson")


def read_manifest(manifest: Path) -> list[Path | GdalPath]:
    """The scenes a text manifest lists, one a line; blank lines and ``#`` comments are skipped,
    and relative paths are taken from the manifest's folder (so a manifest can travel with its data)."""
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is not a path
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"{manifest}: cannot read this manifest ({getattr(exc, 'strerror', None) or exc})") from None
    entries = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = scene_path(text)
        entries.append(entry if isinstance(entry, GdalPath) or entry.is_absolute() else manifest.parent / entry)
    if not entries:
        raise SceneError(f"{manifest}: the manifest lists no scene")
    return entries


def is_item_path(path: Path | GdalPath) -> bool:
    """Whether a scene argument names a STAC Item or ItemCollection: a ``.json``/``.geojson`` file or
    URL, or a STAC API item URL (``…/collections/<id>/items/<id>``, which has no suffix)."""
    if path.suffix.lower() in ITEM_SUFFIXES:
        return True
    return isinstance(path, GdalPath) and path.uri.lower().startswith(("http://", "https://")) and (
        "/collections/" in path.uri and "/items/" in path.uri)  # fmt: skip


def discover_scenes(paths, manifests: bool = True, combine: bool = False,
                    http_timeout: float = DEFAULT_HTTP_TIMEOUT) -> list[SceneFiles]:  # fmt: skip
    """Turn command-line paths into scenes.

    A multi-band GeoTIFF is a scene. Single-band files named as bands (``B02.tif``, ``B2.tif``,
    ``VV.tif``), given together on the command line or found under one folder (sub-folders
    included, e.g. an S2 and an S1 product side by side), form one scene with the multi-band files
    beside them whose band descriptions name Clay bands (an S2 stack and a ``DEM.tif``); the other
    GeoTIFFs (``visual.tif``, ``SCL.tif``, ``B01.tif``, ``AOT.tif``…) are not Clay bands and are listed
    in the scene's ``ignored``. A folder without per-band files gives one scene per multi-band file. A GDAL
    URI (``/vsis3/...``, ``s3://...``, ``https://...``) is a file. A ``.txt`` file is a manifest:
    each of its lines is discovered on its own, so one line is one scene (a file, or a folder of
    per-band files); lines are not manifests themselves. A ``.json`` file or URL is a STAC Item (one
    scene) or ItemCollection (one scene per Item), see :mod:`clay.runtime.scenes.stac`; with ``combine``,
    every Item found is one scene (an S2 item, an S1 item and a DEM item of one place). Remote
    files and Items are read within ``http_timeout`` (:mod:`clay.runtime.scenes.remote`).
    """
    with http_env(http_timeout):
        return _discover(paths, manifests, combine, http_timeout)


def _discover(paths, manifests: bool, combine: bool, http_timeout: float) -> list[SceneFiles]:
    scenes: list[SceneFiles] = []
    loose: list[Path | GdalPath] = []
    for path in map(scene_path, paths):
        if manifests and path.suffix.lower() == MANIFEST_SUFFIX and path.is_file() and not isinstance(path, GdalPath):
            for entry in read_manifest(path):
                scenes.extend(_discover([entry], False, False, http_timeout))
        elif is_item_path(path):
            scenes.extend(item_scenes(path, http_timeout))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise SceneError(f"{path}: no GeoTIFF files in this folder")
            per_band = finest_copies([p for p in found if _is_band_file(p)])
            if per_band:
                members = [p for p in found if p in per_band or (band_count(p) > 1 and names_clay_bands(p))]
                scenes.append(SceneFiles(path, tuple(members), tuple(p for p in found if p not in members)))
                continue
            multi_band = [SceneFiles(p, (p,)) for p in found if band_count(p) > 1]
            if not multi_band:
                raise SceneError(f"{path}: no multi-band GeoTIFF and no file named as a Clay band (B02.tif, VV.tif...)")
            scenes.extend(multi_band)
        elif path.is_file() and _is_band_file(path):
            loose.append(path)
        else:
            scenes.append(SceneFiles(path, (path,)))
    if loose:
        scenes.append(SceneFiles(loose[0].parent, tuple(loose)))
    if combine:
        return [combine_items(scenes)]
    return scenes


def finest_copies(files: list) -> list:
    """Per-band files without the coarser copies of a band that a Sentinel-2 L2A SAFE product holds
    beside its native one (``R10m/…_B02_10m.jp2``, ``R20m/…_B02_20m.jp2``, ``R60m/…_B02_60m.jp2``: the
    10 m one is the band; the others are ESA's downsampled copies, left in the scene's ignored files).
    Files without a SAFE resolution in their name are kept as they are (two of them naming one band
    are refused later, naming both)."""
    finest: dict[str, int] = {}
    for path in files:
        metres = safe_resolution(path)
        if metres is not None:
            label = band_label(path)
            finest[label] = min(metres, finest.get(label, metres))
    return [p for p in files if safe_resolution(p) in (None, finest.get(band_label(p)))]


def _is_band_file(path: Path | GdalPath) -> bool:
    """A single-band file whose name names a band: Clay v0's, or one of a Clay v1.5 sensor's
    (``…_SR_B2.TIF``, ``red.tif``)."""
    label = band_label(path)
    return (canonical_band_name(label) is not None or labels_any_sensor(label)) and band_count(path) == 1
