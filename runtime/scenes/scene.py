"""A scene as the engine needs it: validated up front, on one pixel grid, described by plain data.

:func:`open_scene` checks a scene against an engine before any chip is read: bands matched by name,
the reference grid (:func:`reference_grid`), how each band is brought onto it and into Clay units
(:mod:`clay.runtime.scenes.units`), how its invalid pixels are found (nodata, mask bands, alpha, what a
warp cannot fill), the sensing date (:mod:`clay.runtime.scenes.dates`), whether its footprint crosses the
antimeridian. Every choice is recorded in ``applied`` (the outputs' ``clay:preprocessing``). The
result, :class:`Scene`, holds no open file, so it can be handed to reader threads, processes or Ray
tasks; :mod:`clay.runtime.scenes.reader` reads its chips.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date as Date
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from pyproj import Geod
from rasterio.warp import transform_bounds
from shapely.geometry import box

from ..bands import BAND_NAMES, DATE_ALIASES, S2_BANDS, date_aliases
from ..errors import SceneError, first_line
from ..options import DEFAULT_HTTP_TIMEOUT, RunOptions
from ..resampling import choose_resampling
from ..sensors import INPUT_RULES, SAR_DB, SENSORS, band_for_label
from . import geometry
from .dates import DatedFile, file_date
from .discovery import discover_scenes, is_item_path
from .grid import Chip, chip_grid
from .headers import SUPPORTED_DTYPES, Header, band_sources, read_header
from .inputs import GdalPath, SceneFiles, scene_path
from .products import HLS_L30_NOTE, HLS_S30_NOTE, Product, product_of, products_in
from .remote import http_env
from .sensing import sensor_candidates
from .stac import asset_header, is_pystac_item, scene_from_items, stac_record
from .units import Conversion, band_conversion, stored_conversion

_GEOD = Geod(ellps="WGS84")
#: Pixel sizes within this ratio count as equal when choosing the reference grid.
SAME_SIZE = 1.01
#: Clay v0's chips are 10 m; a scene outside this range of ground pixel sizes gets a warning.
GSD_RANGE_M = (8.0, 12.5)
#: HLS L30 v2.0's stored values: reflectance = DN * 0.0001 (HLS v2.0 user guide, table 6), where the
#: granule's files declare nothing GDAL reads.
HLS_L30_SCALE = (1e-4, 0.0)
#: How a scene whose date cannot be read is given one (the end of its one-line error).
DATE_HINT = "; pass --date YYYY-MM-DD (RunOptions(date=...) in Python)"


class SceneInputs(Protocol):
    """What opening a scene needs to know of the model it feeds. An engine's
    :class:`~clay.runtime.metadata.EngineMetadata` is one; pretraining's chip reader
    (:mod:`clay.training.data`) is another, so that a file trains on the values it embeds with."""

    bands: tuple[str, ...]  # the model's input bands, spec order
    band_means: tuple[float, ...]  # Clay units; invalid pixels are filled with them
    chip_size: int  # px
    patch_size: int  # px
    input_units: dict[str, str]  # what each band's values mean (clay.runtime.bands.INPUT_UNITS)
    resampling: str | None  # how the weights saw bands resampled (clay.runtime.resampling); None: not recorded


@dataclass(frozen=True)
class BandSource:
    """Where one engine band comes from, how it is read onto the scene grid, how its invalid pixels
    are found, and how its values become Clay units."""

    path: Path
    index: int  # 1-based band index in the file
    band: str
    # "direct" (on the scene grid), "repeat" (nearest from a grid an integer multiple of the scene's,
    # aligned: read at native resolution, each pixel repeated), "resample" (coarser grid, resampled
    # window) or "warp"
    mode: str
    nodata: float | None
    mask: str  # "none", "nodata", "mask" or "alpha" (see clay.runtime.scenes.headers.mask_kind)
    s2: bool  # Sentinel-2 L2A: a stored 0 is nodata (its NO_DATA value) whatever the file declares
    conversion: Conversion = Conversion()
    alpha: int | None = None  # the file's alpha band (mask "alpha")
    check: str | None = None  # what clay.runtime.scenes.units.check_values confirms on every chip
    # "resample" and "repeat": the file's grid differs from the scene's only by pixel size and origin
    # (same CRS, north-up, covering the scene): a bilinear resampled windowed read gives the
    # WarpedVRT's values (identical on the demo scene's 20 m bands) at a seventh of the cost; a nearest
    # one, on an integer multiple of the scene's grid, is a native read whose pixels are repeated.
    source_transform: rasterio.Affine | None = None


@dataclass(frozen=True)
class ReadGroup:
    """Bands read together: one file, one way of reading it, in one call."""

    path: Path
    positions: tuple[int, ...]  # where the bands go in the engine's band order
    indexes: tuple[int, ...]  # their 1-based band indexes in the file
    mode: str
    source_transform: rasterio.Affine | None


@dataclass
class Scene:
    """An opened, validated scene on one pixel grid. Plain data."""

    path: Path  # the file, or the folder of per-band files, the user named
    name: str
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int
    date: Date
    sources: tuple[BandSource, ...]  # in the engine's band order
    fill_values: np.ndarray  # band means in Clay units, float32 [C]: nodata becomes 0 after normalisation
    chip_size: int
    patch_size: int
    applied: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    resampling: str = "bilinear"  # how "resample" and "warp" bands are brought onto the grid (clay.runtime.resampling)
    multipart: bool = False  # the footprint crosses the antimeridian (or holds a pole)
    ignored: tuple[Path | str, ...] = ()  # files (STAC assets) beside the scene's bands that are not bands of the engine
    source_url: str | None = None  # what its rows' source_url says (a STAC Item's self link); None: the path
    item_id: str | None = None  # the STAC Item its first band comes from (the item_id column)
    http_timeout: float = DEFAULT_HTTP_TIMEOUT  # remote reads of its files give up after this long without progress

    @cached_property
    def bands(self) -> tuple[str, ...]:
        return tuple(s.band for s in self.sources)

    @cached_property
    def read_groups(self) -> tuple[ReadGroup, ...]:
        groups: dict[tuple[Path, str], list[int]] = {}
        for position, source in enumerate(self.sources):
            groups.setdefault((source.path, source.mode), []).append(position)
        made = [ReadGroup(path, tuple(positions), tuple(self.sources[p].index for p in positions), mode,
                          self.sources[positions[0]].source_transform)
                for (path, mode), positions in groups.items()]  # fmt: skip
        # The reader needs on-grid groups first (a bilinear window read steers by their nodata).
        return tuple(sorted(made, key=lambda g: g.mode == "resample"))

    def chips(self, edge: str = "shift") -> list[Chip]:
        """The chip grid, row-major (see :func:`clay.runtime.scenes.grid.chip_grid`)."""
        return chip_grid(self.height, self.width, self.chip_size, edge)

    def chip_polygon(self, chip: Chip):
        return geometry.chip_polygon(self.transform, self.crs, chip, self.patch_size)

    def chip_centre(self, chip: Chip) -> tuple[float, float]:
        return geometry.chip_centre(self.transform, self.crs, chip, self.chip_size)


def as_scene_files(scene, http_timeout: float = DEFAULT_HTTP_TIMEOUT) -> SceneFiles:
    """A scene as given to the API: :class:`SceneFiles`, a path or URI (a GeoTIFF, a folder, a STAC
    Item), or a ``pystac.Item``. A STAC Item over http is fetched within ``http_timeout``."""
    if isinstance(scene, SceneFiles):
        return scene
    if is_pystac_item(scene):
        return scene_from_items([scene])
    path = scene_path(scene)
    if is_item_path(path):
        scenes = discover_scenes([path], http_timeout=http_timeout)
        if len(scenes) != 1:
            raise SceneError(f"{path}: {len(scenes)} STAC Items, so {len(scenes)} scenes: embed them with embed_scenes, "
                             "or as one scene with clay.runtime.scenes.stac.scene_from_items")  # fmt: skip
        return scenes[0]
    if not path.exists():
        raise SceneError(f"{path}: no such file")
    return SceneFiles(path, (path,)) if path.is_file() else discover_scenes([path], http_timeout=http_timeout)[0]


def open_scene(scene: SceneFiles | str | Path, engine: SceneInputs, options: RunOptions | None = None) -> Scene:
    """Validate a scene against an engine before any pixel is read (see the module docstring).

    Raises :class:`SceneError` with one line naming the file for anything a user can fix; any other
    failure while opening (a PROJ or GDAL error of an unexpected kind) is turned into one too, so that
    one scene never stops a run with a traceback.
    """
    options = options or RunOptions()
    with http_env(options.http_timeout):  # remote headers: in whichever thread opens the scene
        scene = as_scene_files(scene, options.http_timeout)
        try:
            return _open(scene, engine, options)
        except SceneError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is this scene's, in one line
            raise SceneError(f"{scene.path}: cannot be opened ({type(exc).__name__}: {first_line(exc)})") from None


def _open(scene: SceneFiles, engine: SceneInputs, options: RunOptions) -> Scene:
    if scene.problem:
        raise SceneError(scene.problem)
    wanted = tuple(engine.bands)
    sensor = v15_sensor(engine)
    if scene.v0_problem and (not sensor or INPUT_RULES[sensor].v0_units):
        raise SceneError(scene.v0_problem)
    rule = INPUT_RULES[sensor] if sensor else None
    if sensor:
        scene = check_sensor(scene, sensor, options.sensor)
    files, unread = _files_to_read(scene, wanted)
    headers = {path: scene_header(scene, path) for path in files}
    if sensor:
        headers, product = _sensor_products(scene, headers, sensor)
        product_note = product.v1_5_note if product else None
        headers = {path: h if scene.declared(path) else sensor_names(h, sensor) for path, h in headers.items()}
        _check_subset(scene, headers, sensor, wanted)
    else:
        headers, product_note = _products(scene, headers)
        product = None
    sources = band_sources(scene, list(headers.values()), wanted)
    used = list(dict.fromkeys(headers[sources[b][0]] for b in wanted))  # engine band order
    allowed = rule.dtypes if rule else SUPPORTED_DTYPES
    for band in wanted:
        path, index = sources[band]
        dtype = headers[path].dtypes[index - 1]
        if dtype not in allowed:
            kind = f" for {sensor}" if sensor else ""
            raise SceneError(f"{path}: band {band} has unsupported data type {dtype}{kind} (use {', '.join(allowed)})")
    if len(used) == 1 and not any(used[0].names):  # band_sources took an unnamed 13-band stack in Clay's order
        applied_bands = (f"{used[0].path.name}: {used[0].count} bands without descriptions, taken in Clay's order "
                         f"({', '.join(BAND_NAMES)}); values checked per chip")  # fmt: skip
    else:
        applied_bands = None
    reference, grid_note = reference_grid(used, wanted, sources)
    _check_overlap(reference, used)
    applied: dict[str, object] = {"grid": grid_note}
    if product_note:
        applied["product"] = product_note
    if applied_bands:
        applied["band_order"] = applied_bands
    warnings: list[str] = []
    day, date_note, date_warning = scene_date(scene, used, options.date)
    applied["date"] = date_note
    if date_warning:
        warnings.append(date_warning)
    aliases = date_aliases(day.year, day.month, day.day)
    if aliases:  # recorded per scene; the warning is one fixed sentence per kind, said once per run
        date_note["model_encoding"] = "; ".join(aliases.values())
        warnings += [f"{DATE_ALIASES[kind]} (per scene: date.model_encoding in the outputs' clay:preprocessing)"
                     for kind in aliases]  # fmt: skip
    method, chosen_by = choose_resampling(engine.resampling, options.resampling, getattr(engine, "model", "clay-v0"))
    readers, units, modes, masks = [], {}, {}, {}
    for band in wanted:
        path, index = sources[band]
        header = headers[path]
        if rule is None or rule.v0_units:
            converted = band_conversion(header, index, band, options.sar_units, options.s2_offset, day)
        else:
            converted = stored_conversion(header, index, band, sensor, HLS_L30_SCALE if product and product.v1_5_note == HLS_L30_NOTE else None)
        if converted.warning:  # named after the scene, so that per-band files say it once
            warnings.append(converted.warning.replace(str(header.path), str(scene.path), 1))
        units.setdefault(converted.note, []).append(band)
        mode = _mode(header, index, reference, method)
        if mode != "direct":
            modes.setdefault(_mode_note(mode, method, header, reference), []).append(band)
        mask = header.masks[index - 1]
        if mask != "none" or band in S2_BANDS:
            masks.setdefault(_mask_note(header, index, band), []).append(band)
        readers.append(BandSource(path, index, band, mode, header.nodata[index - 1], mask, band in S2_BANDS,
                                  converted.conversion, header.alpha, converted.check,
                                  header.transform if mode in ("resample", "repeat") else None))  # fmt: skip
    applied["units"] = {note: bands for note, bands in units.items()}
    # The method and why, then each way of reading a band off the grid with the bands read so.
    applied["resampling"] = {"method": method, "chosen_by": chosen_by, **modes}
    applied["invalid_pixels"] = masks
    applied["input_units"] = dict(engine.input_units)
    if scene.assets:
        applied["stac"] = stac_record(scene, sources)
    ignored = tuple(scene.ignored) + tuple(_label(scene, p) for p in unread + [p for p in files if headers[p] not in used])
    if ignored:
        applied["ignored_files"] = [str(p) for p in ignored]
    try:
        multipart = geometry.crosses_antimeridian(reference.transform, reference.crs, reference.width, reference.height)
    except geometry.FootprintError as exc:
        raise SceneError(f"{reference.path}: {exc}") from None
    if multipart:
        applied["footprint"] = "crosses the antimeridian or holds a pole: geometries are MultiPolygons cut at ±180°"
    result = Scene(
        path=scene.path, name=scene.name, crs=reference.crs, transform=reference.transform, width=reference.width,
        height=reference.height, date=day, sources=tuple(readers),
        fill_values=fill_values(engine, sensor), chip_size=engine.chip_size,
        patch_size=engine.patch_size, applied=applied, resampling=method, multipart=multipart, ignored=ignored,
        http_timeout=options.http_timeout,
    )  # fmt: skip
    lead = scene.declared(sources[wanted[0]][0])
    if lead is not None:
        result.source_url, result.item_id = lead.item.source, lead.item.id
    if sensor:
        gsd, applied["sensor"] = sensor_record(scene, engine, sensor, reference, headers)
    else:
        gsd = gsd_warning(result, reference)
    result.warnings = tuple(dict.fromkeys(w for w in (gsd, *warnings) if w))
    return result


def check_sensor(scene: SceneFiles, sensor: str, override: str | None) -> SceneFiles:
    """A scene given to a Clay v1.5 artifact of ``sensor``: refused in one line where its STAC Item,
    product names or band names say it is another sensor's (or ``override`` names another); the
    scene with how its sensor was told (for the outputs)."""
    candidates, told_by = sensor_candidates(scene, override)
    if candidates and sensor not in candidates:
        what = " or ".join(candidates)
        raise SceneError(f"{scene.path}: a {what} scene ({told_by}); this engine's artifact is for {sensor}"
                         + ("" if override else f" (name the sensor with --sensor if it is a {sensor} scene)"))  # fmt: skip
    if scene.sensor_note is None:
        how = told_by if candidates == [sensor] else f"the engine's artifact ({sensor})"
        scene = replace(scene, sensor_note=how)
    return scene


def _check_subset(scene: SceneFiles, headers: dict, sensor: str, wanted: tuple[str, ...]) -> None:
    """A scene with some of the sensor's bands but not all the artifact takes: one line that says
    which, and the ``clay-export --sensor`` of an artifact set for the bands it has (Clay v1.5 takes
    any subset, but each subset's weights are folded into its own artifacts)."""
    present = {name for h in headers.values() for name in h.names if name}
    have = [b for b in SENSORS[sensor].bands if b in present]
    missing = [b for b in wanted if b not in present]
    if have and missing:
        raise SceneError(f"{scene.path}: lacks {sensor} band(s) {', '.join(missing)} that this artifact takes (the scene "
                         f"has {', '.join(have)}); Clay v1.5 takes any subset: export an artifact set for these bands with "
                         f"clay-export --sensor {'+'.join((sensor, *have))}")  # fmt: skip


def v15_sensor(engine: SceneInputs) -> str:
    """The Clay v1.5 sensor an engine's artifact was made for ("" for Clay v0 and the training reader)."""
    sensor = getattr(engine, "sensor", "") or ""
    return sensor if getattr(engine, "model", "clay-v0") == "clay-v1.5" and sensor in INPUT_RULES else ""


def fill_values(engine: SceneInputs, sensor: str) -> np.ndarray:
    """What invalid pixels are filled with, in the engine's input units: the band means (0 after
    normalisation); for a sensor the engine takes in linear power and normalises in dB (S1 RTC), the
    means' linear power, so that the graph's 10·log10 gives the mean back."""
    means = np.asarray(engine.band_means, dtype=np.float64)
    if sensor in SAR_DB:
        means = 10.0 ** (means / 10.0)
    return means.astype(np.float32)


def _sensor_products(scene: SceneFiles, headers: dict, sensor: str) -> tuple[dict, Product | None]:
    """Clay v1.5: a file whose name says it is a product of another sensor (or one v1.5 refuses) is
    refused in one line; one of this sensor is taken, an HLS S30 granule's offset-free DNs declared
    as for Clay v0. Returns the headers and the product the files are (``None``: none named)."""
    found = None
    for path, header in list(headers.items()):
        if scene.declared(path) is not None:
            continue
        for product in products_in(path)[:1]:  # what the file is: its nearest name (sensing.py weighs the others)
            if product.v1_5_refused:
                raise SceneError(f"{path}: a {product.kind} ({product.name}): {product.v1_5_refused}")
            if product.sensor and product.sensor != sensor:
                raise SceneError(f"{path}: a {product.kind} ({product.name}), a {product.sensor} product: not embedded "
                                 f"with a {sensor} artifact")  # fmt: skip
            found = found or product
        if found is not None and found.note == HLS_S30_NOTE:
            tags = {**header.tags, "": {**header.tags.get("", {}), "BOA_OFFSET_APPLIED": "true"}}
            headers[path] = replace(header, tags=tags, declared={**header.declared, "harmonised": "HLS S30 v2.0 product"})
    return headers, found


def sensor_names(header: Header, sensor: str) -> Header:
    """The header with its bands named as ``sensor``'s (:func:`clay.runtime.sensors.band_for_label`);
    a multi-band file without band descriptions takes the product's band order where it has one
    (NAIP: red, green, blue, NIR)."""
    names = tuple(band_for_label(sensor, label) for label in header.labels) if header.labels else ()
    if not any(names) and header.count > 1 and not any(header.labels):
        order = next((o for o in INPUT_RULES[sensor].order if len(o) == header.count), None)
        if order is not None:
            names = order
    if not any(names):
        return header  # nothing named for the sensor: band_sources says what is missing (or takes an unnamed v0 stack)
    return replace(header, names=names)


def sensor_record(scene: SceneFiles, engine: SceneInputs, sensor: str, reference: Header,
                  headers: dict) -> tuple[str | None, dict]:  # fmt: skip
    """What the outputs record of a Clay v1.5 scene's sensor (its name, how it was told, the bands
    used and the sensor's bands not used: the scene lacks them, or the engine's artifact for the
    scene's bands does not take them), the gsd the model sees beside the scene's own pixel
    size) and a warning where that pixel size is outside what the sensor's training data held."""
    across, down = ground_pixel_edges(reference)
    pixel = float(np.sqrt(across * down))
    low, high = INPUT_RULES[sensor].pixel_m
    gsd = getattr(engine, "gsd", None)
    record = {
        "name": sensor,
        "told_by": scene.sensor_note or "the engine's artifact",
        "bands_used": list(engine.bands),
        "sensor_bands_not_used": [b for b in SENSORS[sensor].bands if b not in engine.bands],  # absent, or no artifact takes them
        "gsd_model_m": gsd,
        "gsd_source": "the sensor's metadata.yaml gsd, as the v1.5 weights were trained (folded into the engine)",
        "scene_pixel_m": round(pixel, 3),
        "training_pixel_m": [low, high],
    }
    warning = None
    if not low <= pixel <= high:
        warning = (f"{scene.path}: pixels are about {pixel:.3g} m on the ground; Clay v1.5 saw {sensor} at {low:g}-{high:g} m "
                   f"and takes it as gsd {gsd:g} m")  # fmt: skip
    return warning, record


def _products(scene: SceneFiles, headers: dict) -> tuple[dict, str | None]:
    """The files' products, from their names (:mod:`clay.runtime.scenes.products`): a product whose
    band names mean other bands than Sentinel-2's refuses the scene; an HLS S30 granule is taken as
    Sentinel-2, its offset-free DNs declared (the header says so, as a STAC Item's declaration would),
    and the note returned for the outputs. A STAC asset's Item already said which mission it is."""
    note = None
    for path, header in list(headers.items()):
        product = product_of(path) if scene.declared(path) is None else None
        if product is None:
            continue
        if product.refused:
            raise SceneError(f"{path}: a {product.kind} ({product.name}): {product.refused}")
        note = product.note
        tags = {**header.tags, "": {**header.tags.get("", {}), "BOA_OFFSET_APPLIED": "true"}}
        headers[path] = replace(header, tags=tags, declared={**header.declared, "harmonised": "HLS S30 v2.0 product"})
    return headers, note


def _files_to_read(scene: SceneFiles, wanted: tuple[str, ...]) -> tuple[list, list]:
    """The scene's files whose headers are read, and those left unread: a STAC Item's assets that hold
    none of the engine's bands are never opened (on a remote archive, each is a request)."""
    if not scene.assets:
        return list(scene.files), []
    needed = [p for p in scene.files if set(scene.declared(p).bands) & set(wanted)]
    return needed, [p for p in scene.files if p not in needed]


def _label(scene: SceneFiles, path: Path | GdalPath) -> Path | GdalPath | str:
    asset = scene.declared(path)
    return asset.label if asset is not None else path


def scene_header(scene: SceneFiles, path: Path | GdalPath) -> Header:
    """A file's header (:func:`~clay.runtime.scenes.headers.read_header`) with what a STAC Item declares about
    it (:func:`~clay.runtime.scenes.stac.asset_header`); errors name the Item and the asset."""
    asset = scene.declared(path)
    if asset is None:
        return read_header(path)
    try:
        return asset_header(read_header(path), asset)
    except SceneError as exc:
        message = str(exc)
        raise SceneError(message if message.startswith(f"{asset.item.id}: ") else
                         f"{asset.item.id}: asset {asset.key}: {message}") from None  # fmt: skip


def ground_pixel_edges(header: Header) -> tuple[float, float]:
    """The two edges of a pixel at the grid's centre on the ground, in metres (geodesic)."""
    col, row = header.width / 2, header.height / 2
    lons, lats = geometry.lonlat(header.transform, header.crs, [col, col + 1, col], [row, row, row + 1])
    _, _, across = _GEOD.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, down = _GEOD.inv(lons[0], lats[0], lons[2], lats[2])
    return float(across), float(down)


def ground_pixel_size(header: Header) -> float:
    """A grid's pixel size on the ground in metres (the geometric mean of a pixel's two edges at the
    grid's centre), so that degrees and metres compare."""
    across, down = ground_pixel_edges(header)
    return float(np.sqrt(across * down))


def reference_grid(used: list[Header], wanted: tuple[str, ...], sources: dict) -> tuple[Header, dict]:
    """The grid a scene is read on, by a rule that does not look at file or folder names: the file
    with the finest ground pixels among those holding Sentinel-2 bands (the optical bands carry the
    detail; SAR and DEM are resampled onto them), else among all the scene's files; files within 1 %
    of the finest count as equal and the one holding the earliest engine band (spec order) wins."""
    try:
        sizes = {id(h): ground_pixel_size(h) for h in used}
    except geometry.FootprintError as exc:
        raise SceneError(f"{used[0].path}: {exc}") from None
    optical = [h for h in used if any(sources[b][0] == h.path for b in wanted if b in S2_BANDS)]
    candidates = optical or used
    finest = min(sizes[id(h)] for h in candidates)
    reference = next(h for h in candidates if sizes[id(h)] <= finest * SAME_SIZE)  # `used` is in engine band order
    rule = "finest file holding Sentinel-2 bands" if optical else "finest file"
    return reference, {"file": reference.path.name, "pixel_size_m": round(sizes[id(reference)], 3), "rule": rule,
                       "crs": reference.crs.to_string()}  # fmt: skip


def scene_date(scene: SceneFiles, used: list[Header], override: Date | None) -> tuple[Date, dict, str | None]:
    """The scene's sensing date, the note recorded for it, and a warning (see :mod:`clay.runtime.scenes.dates`).

    Where the files disagree, the date of the file holding the earliest engine band wins (spec order:
    Sentinel-2, then Sentinel-1, then the DEM), from the most trusted source any file has; the
    others' dates are recorded."""
    dated: list[tuple[Header, DatedFile]] = []
    for header in used:
        try:
            found = file_date(header.path, header.tags, header.date)
        except ValueError as exc:
            raise SceneError(f"{header.path}: {exc}{DATE_HINT}") from None
        if found:
            dated.append((header, found))
    by_file = {h.path.name: f"{d.date} ({d.source})" for h, d in dated}
    if override is not None:
        return override, {"value": str(override), "source": "--date", "files": by_file}, None
    trusted = [(h, d) for h, d in dated if d.trusted]
    if not (trusted or dated):
        raise SceneError(f"{scene.path}: no acquisition date (no acquisition tag, product name, date in a name "
                         f"or TIFF DateTime){DATE_HINT}")  # fmt: skip
    header, chosen = (trusted or dated)[0]
    of_file = "" if chosen is header.date else f" of {header.path.name}"  # a catalogue's date names its Item
    note = {"value": str(chosen.date), "source": f"{chosen.source}{of_file}"}
    if len({d.date for _, d in dated}) > 1:
        note["files"] = by_file
    warning = None
    if not chosen.trusted:
        why = ("the TIFF DateTime tag, which is often the processing time" if chosen.source == "TIFF DateTime tag" else
               f"{chosen.source}, which may be a processing or download date")  # fmt: skip
        warning = f"{header.path}: date {chosen.date} from {why}; pass --date YYYY-MM-DD if the scene was sensed on another day"
    return chosen.date, note, warning


def _mode(header: Header, index: int, reference: Header, method: str) -> str:
    """How a band is brought onto the reference grid (see :attr:`BandSource.mode`)."""
    same = (header.crs, header.transform, header.width, header.height) == (
        reference.crs, reference.transform, reference.width, reference.height)  # fmt: skip
    if same:
        return "direct"
    if header.masks[index - 1] not in ("mask", "alpha") and _resamples_by_window(header, reference):
        if method == "nearest" and repeat_factor(header.transform, reference.transform) is not None:
            return "repeat"
        return "resample"
    return "warp"


def _mode_note(mode: str, method: str, header: Header, reference: Header) -> str:
    """How a band was brought onto the grid, in the words of the outputs' ``clay:preprocessing``."""
    if mode == "repeat":
        k = repeat_factor(header.transform, reference.transform)
        return f"resampled nearest (native pixels repeated {k}×{k})"
    return f"resampled {method}" if mode == "resample" else f"warped {method}"


#: How far (in scene pixels) a pixel size ratio or an origin offset may be from an integer and still
#: count as one: float rounding of geotransforms written by GDAL and by STAC's proj:transform.
ALIGNED_PX = 1e-6


def repeat_factor(source: rasterio.Affine, scene: rasterio.Affine) -> int | None:
    """``k`` where a north-up grid's pixels are exactly ``k`` × ``k`` of the scene grid's and its
    pixel edges fall on the scene's (origin offset a whole number of scene pixels), else ``None``.
    Then the nearest-resampled value of scene pixel ``i`` is source pixel ``(i + offset) // k``: a
    scene pixel's centre ``(i + offset + 0.5) / k`` is at least ``0.5 / k`` from a source edge, so
    no rounding decides it. Both transforms must be north-up (``b == d == 0``), as
    :func:`_resamples_by_window` checks."""
    ratio_x, ratio_y = source.a / scene.a, source.e / scene.e
    k = round(ratio_x)
    if k < 1 or abs(ratio_x - k) > ALIGNED_PX or abs(ratio_y - k) > ALIGNED_PX:
        return None
    offset_x, offset_y = (scene.c - source.c) / scene.a, (scene.f - source.f) / scene.e
    if abs(offset_x - round(offset_x)) > ALIGNED_PX or abs(offset_y - round(offset_y)) > ALIGNED_PX:
        return None
    return k


def _mask_note(header: Header, index: int, band: str) -> str:
    kind = header.masks[index - 1]
    if kind == "mask":
        return "GDAL mask band (per-band, per-dataset or alpha)"
    if kind == "alpha":
        return f"alpha band {header.alpha} of {header.path.name}"
    if kind == "nodata":
        by = f" ({header.declared['nodata']})" if "nodata" in header.declared else ""
        return f"nodata value {header.nodata[index - 1]:g}{by}" + ("; 0 (L2A NO_DATA)" if band in S2_BANDS else "")
    return "0 (L2A NO_DATA)"


def _resamples_by_window(header: Header, reference: Header) -> bool:
    """Whether a file can be read onto the reference grid by a resampled window instead of a warp."""
    src, ref = header.transform, reference.transform
    north_up = src.b == src.d == ref.b == ref.d == 0 and src.a > 0 > src.e and ref.a > 0 > ref.e
    if header.crs != reference.crs or not north_up:
        return False
    tolerance = 1e-6 * abs(src.a)
    left, top = ref.c, ref.f
    right, bottom = ref @ (reference.width, reference.height)
    src_right, src_bottom = src @ (header.width, header.height)
    return (src.c - tolerance <= left and right <= src_right + tolerance
            and src.f + tolerance >= top and bottom >= src_bottom - tolerance)  # fmt: skip


def _corner_bounds(header: Header) -> tuple[float, float, float, float]:
    """The bounding box of a grid's four corners in its CRS (any affine geotransform)."""
    xs, ys = header.transform @ (np.array([0, header.width, header.width, 0]), np.array([0, 0, header.height, header.height]))
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _check_overlap(reference: Header, headers: list[Header]) -> None:
    ref = box(*_corner_bounds(reference))
    for header in headers:
        if header is reference:
            continue
        try:
            bounds = transform_bounds(header.crs, reference.crs, *_corner_bounds(header))
        except Exception:  # noqa: BLE001 - PROJ errors have many types
            raise SceneError(f"{header.path} and {reference.path}: CRS {header.crs} cannot be matched to {reference.crs}") from None
        west, south, east, north = bounds
        if west > east:  # lon/lat bounds across ±180° (rasterio's west > east): the file's longitudes
            # run from west to east + 360, which a reference grid may give as either of these
            other = box(west, south, east + 360.0, north).union(box(west - 360.0, south, east, north))
        else:
            other = box(west, south, east, north)
        overlap = ref.intersection(other)
        if overlap.area < 0.01 * ref.area:
            raise SceneError(f"{header.path} and {reference.path} do not overlap")


def gsd_warning(scene: Scene, reference: Header) -> str | None:
    """A warning when the scene's ground pixels are far from Clay v0's 10 m, or not square on the
    ground (a geographic CRS away from the equator)."""
    across, down = ground_pixel_edges(reference)
    size = f"{across:.1f} × {down:.1f} m" if abs(across - down) > 0.05 * max(across, down) else f"{across:.1f} m"
    if scene.crs.is_geographic:
        return (f"{scene.path}: geographic CRS {scene.crs.to_string()}: pixels are about {size} on the ground here; "
                "Clay v0 was trained on 10 m UTM chips")  # fmt: skip
    if not GSD_RANGE_M[0] <= np.sqrt(across * down) <= GSD_RANGE_M[1]:
        return f"{scene.path}: pixels are about {size} on the ground; Clay v0 was trained on 10 m chips"
    return None
