"""Which Clay v1.5 sensor a scene is, and which of an engine folder's artifacts embeds it.

A Clay v1.5 engine folder holds one artifact set per sensor (or band subset of one:
``clay-export --sensor``); each scene is embedded by the set made for its sensor and bands. The
sensor is read from, in this order of trust:

1. ``--sensor NAME`` (:attr:`RunOptions.sensor`): the user's word, checked against the products the
   names say (NAIP files given ``--sensor sentinel-2-l2a`` are refused, not embedded as S2);
2. what STAC Items declare: collection id, ``platform``, ``constellation``
   (:data:`COLLECTIONS`, :data:`PLATFORMS`);
3. product names in the files' and their folders' names (:mod:`clay.runtime.scenes.products`);
4. band labels (descriptions, per-band file names): the sensor whose labels name strictly more of
   the scene's bands than any other's (``B02…B12`` is Sentinel-2; ``B02``-``B04`` alone could be
   Landsat's HLS numbering and is refused as two possible); unnamed multi-band 8-bit files by
   their band count (NAIP: 4).

Two sensors possible → one line naming both and ``--sensor``; none → one line; a sensor the engine
has no artifact for → one line naming the ones it has. The bands used are the scene's bands of that
sensor that the artifact takes: the largest artifact whose bands the scene all has (a band subset
exported with ``clay-export --sensor NAME+BAND+BAND...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SceneError
from ..metadata import EngineMetadata
from ..sensors import INPUT_RULES, SENSORS, band_for_label
from .headers import read_header
from .inputs import ItemFacts, SceneFiles
from .products import products_in

#: STAC collection ids → sensor (Earth Search v1, Planetary Computer, USGS landsatlook, LP DAAC CMR).
COLLECTIONS = {
    "sentinel-2-l2a": "sentinel-2-l2a", "sentinel-2-c1-l2a": "sentinel-2-l2a", "hls2-s30": "sentinel-2-l2a",
    "hlss30.v2.0": "sentinel-2-l2a", "hlss30_2.0": "sentinel-2-l2a",
    "landsat-c2-l2": "landsat-c2l2-sr", "landsat-c2l2-sr": "landsat-c2l2-sr", "hls2-l30": "landsat-c2l2-sr",
    "hlsl30.v2.0": "landsat-c2l2-sr", "hlsl30_2.0": "landsat-c2l2-sr", "landsat-c2-l1": "landsat-c2l1",
    "landsat-c2l1": "landsat-c2l1", "naip": "naip", "sentinel-1-rtc": "sentinel-1-rtc",
    "modis-09a1-061": "modis", "modis-09q1-061": "modis",
}  # fmt: skip
#: STAC ``platform``/``constellation`` values → sensor (where the collection id is not one above).
PLATFORMS = (
    (re.compile(r"^sentinel-2[a-d]?$", re.IGNORECASE), "sentinel-2-l2a"),
    (re.compile(r"^landsat[-_ ]?0?[89]$", re.IGNORECASE), "landsat-c2l2-sr"),
    (re.compile(r"^sentinel-1[a-d]?$", re.IGNORECASE), "sentinel-1-rtc"),
    (re.compile(r"^naip$", re.IGNORECASE), "naip"),
)
HINT = "; name it with --sensor NAME (RunOptions(sensor=...) in Python)"


@dataclass(frozen=True)
class Choice:
    """The artifact set (its key, :attr:`clay.runtime.sensors.Sensor.key`) for a scene, its sensor,
    and how the sensor was told."""

    key: str
    sensor: str
    told_by: str


def sensor_candidates(scene: SceneFiles, override: str | None = None) -> tuple[list[str], str]:
    """The sensors the scene may be (one where it is told, several where it is not) and how that was
    told (see the module docstring); raises :class:`SceneError` in one line for a product Clay v1.5
    refuses and for ``override`` contradicting the product names."""
    named = {p.sensor: p for path in scene.files if scene.declared(path) is None for p in products_in(path)}
    refused = next((p for p in named.values() if p.v1_5_refused), None)
    if refused is not None:
        raise SceneError(f"{scene.path}: a {refused.kind} ({refused.name}): {refused.v1_5_refused}")
    products = {s: p for s, p in named.items() if s}
    if override is not None:
        if override not in SENSORS:
            raise SceneError(f"--sensor {override}: unknown; Clay v1.5 knows: {', '.join(SENSORS)}")
        # each file is the product its nearest name says (a Landsat file in an S2-named folder is Landsat's)
        nearest = [
            found[0]
            for path in scene.files
            if scene.declared(path) is None
            for found in [products_in(path)]
            if found
        ]
        other = next((p for p in nearest if p.sensor and p.sensor != override), None)
        if other is not None:
            raise SceneError(f"{scene.path}: --sensor {override}, but its names say it is a {other.kind} "
                             f"({other.name}: {other.sensor}); not embedded as {override}")  # fmt: skip
        return [override], "--sensor"
    declared = _declared(scene)
    if declared:
        return [declared[0]], declared[1]
    if products:
        if len(products) > 1:
            return list(products), " and ".join(f"{p.kind} {p.name}" for p in products.values())
        sensor, product = next(iter(products.items()))
        return [sensor], f"product name {product.name}"
    return _by_bands(scene)


def scene_sensor(scene: SceneFiles, override: str | None = None) -> tuple[str, str]:
    """The scene's one sensor and how it was told; :class:`SceneError` in one line for two possible or none."""
    candidates, told_by = sensor_candidates(scene, override)
    if not candidates:
        raise SceneError(f"{scene.path}: no Clay v1.5 sensor recognised (no STAC Item, product name or band name of "
                         f"{', '.join(SENSORS)}){HINT}")  # fmt: skip
    if len(candidates) > 1:
        raise SceneError(
            f"{scene.path}: two sensors possible: {candidates[0]} and {candidates[1]} ({told_by}){HINT}"
        )
    return candidates[0], told_by


def item_sensor(item: ItemFacts) -> str | None:
    """The sensor a STAC Item declares: its collection id, else its platform or constellation."""
    told = _item_told(item)
    return told[0] if told else None


def _item_told(item: ItemFacts) -> tuple[str, str] | None:
    sensor = COLLECTIONS.get((item.collection or "").lower())
    if sensor:
        return sensor, f"STAC collection {item.collection}"
    for value in (item.platform, item.constellation):
        for pattern, name in PLATFORMS:
            if value and pattern.match(str(value)):
                return name, f"STAC platform {value}"
    return None


def _declared(scene: SceneFiles) -> tuple[str, str] | None:
    for asset in scene.assets:
        told = _item_told(asset.item)
        if told:
            return told
    return None


def _by_bands(scene: SceneFiles) -> tuple[list[str], str]:
    headers = [read_header(path) for path in scene.files if scene.declared(path) is None]
    labels = [label for h in headers for label in h.labels if label]
    counts = {name: len({band_for_label(name, label) for label in labels} - {None}) for name in INPUT_RULES}
    best = max(counts.values())
    if best:
        top = [name for name, n in counts.items() if n == best]
        return top, f"band names {', '.join(dict.fromkeys(labels))}"
    unnamed = [h for h in headers if h.count > 1 and not any(h.labels) and set(h.dtypes) == {"uint8"}]
    fits = list(dict.fromkeys(name for name, rule in INPUT_RULES.items() for h in unnamed
                              if any(len(o) == h.count for o in rule.order)))  # fmt: skip
    return fits, f"{unnamed[0].count} unnamed 8-bit bands" if unnamed else "nothing"


def scene_bands(scene: SceneFiles, sensor: str) -> tuple[str, ...]:
    """The bands of ``sensor`` the scene's files hold (by label, or an unnamed file's product order), in the sensor's order."""
    found: set[str] = set()
    for path in scene.files:
        declared = scene.declared(path)
        if declared is not None:
            found |= {b for b in declared.bands if b}
            continue
        header = read_header(path)
        named = {band_for_label(sensor, label) for label in header.labels} - {None}
        if not named and not any(header.labels):
            order = next((o for o in INPUT_RULES[sensor].order if len(o) == header.count), ())
            named = set(order)
        found |= named
    return tuple(b for b in SENSORS[sensor].bands if b in found)


def choose_artifact(
    scene: SceneFiles, artifacts: Mapping[str, EngineMetadata], override: str | None = None
) -> Choice:
    """The artifact set of an engine folder (key → its metadata) that embeds ``scene``: its sensor's
    set with the most bands that the scene all has. :class:`SceneError` in one line when the engine
    has none for the sensor, or none for the bands the scene has."""
    sensor, told_by = scene_sensor(scene, override)
    return artifact_for(scene, sensor, told_by, artifacts)


def artifact_for(
    scene: SceneFiles, sensor: str, told_by: str, artifacts: Mapping[str, EngineMetadata]
) -> Choice:
    """The artifact set for a scene of ``sensor`` (see :func:`choose_artifact`)."""
    mine = {key: meta for key, meta in artifacts.items() if meta.sensor == sensor}
    if not mine:
        have = sorted({meta.sensor for meta in artifacts.values()})
        raise SceneError(f"{scene.path}: a {sensor} scene ({told_by}); this engine has artifacts for {', '.join(have)} "
                         f"only (export one with clay-export --sensor {sensor})")  # fmt: skip
    present = scene_bands(scene, sensor)
    fitting = [key for key, meta in mine.items() if set(meta.bands) <= set(present)]
    if not fitting:
        sets = "; ".join(f"{'+'.join(m.bands)}" for m in mine.values())
        raise SceneError(f"{scene.path}: a {sensor} scene ({told_by}) with bands {', '.join(present) or 'none of its'}; "
                         f"this engine's {sensor} artifacts take {sets} (export one for these bands with clay-export "
                         f"--sensor {'+'.join((sensor, *present))})")  # fmt: skip
    key = max(fitting, key=lambda k: len(mine[k].bands))
    return Choice(key, sensor, told_by)
