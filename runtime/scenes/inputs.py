"""What the user pointed at, as given: local paths and GDAL paths (``/vsis3/...``, ``s3://``,
``https://`` URIs), the files that make one scene (:class:`SceneFiles`), and what a STAC Item declares
about each of them (:class:`ItemFacts`, :class:`AssetFacts`, filled by :mod:`clay.runtime.scenes.stac`).

Plain records with no reading of their own, so that discovery, file headers and STAC all build on
them without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path

#: URI schemes GDAL reads through a virtual file system (``/vsicurl/`` keeps the whole URL).
URI_SCHEMES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/"}


@dataclass(frozen=True)
class GdalPath:
    """A scene file that GDAL reads and this machine cannot list: ``/vsis3/...``, ``/vsicurl/...``,
    or ``s3://``, ``gs://``, ``az://``, ``http(s)://`` URIs (given to GDAL as ``/vsi...`` paths).

    ``pathlib`` would fold the ``//`` of ``/vsicurl/https://...``, so this keeps the text as given.
    It answers the few ``Path`` questions the runtime asks of a scene file; whether it exists is
    GDAL's to say when the header is read (one line with GDAL's reason, like any unreadable file).
    Messages and ``source_url`` show the user's spelling; rasterio opens :attr:`gdal`.
    """

    uri: str
    gdal: str

    @classmethod
    def parse(cls, text: str) -> GdalPath | None:
        """The GDAL path of ``text``, or ``None`` when it is an ordinary local path."""
        if text.startswith("/vsi"):
            return cls(text, text)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in URI_SCHEMES:
            return None
        prefix = URI_SCHEMES[scheme.lower()]
        return cls(text, prefix + (text if prefix == "/vsicurl/" else rest))

    def __fspath__(self) -> str:
        return self.gdal

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> GdalPath:
        uri, gdal = self.uri.split("?", 1)[0], self.gdal.split("?", 1)[0]
        return GdalPath(uri.rsplit("/", 1)[0], gdal.rsplit("/", 1)[0])

    def is_file(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def exists(self) -> bool:
        return True

    def resolve(self) -> GdalPath:
        return self


def scene_path(path: str | Path | GdalPath) -> Path | GdalPath:
    """A command-line scene argument as a local :class:`Path` or a :class:`GdalPath`."""
    if isinstance(path, (Path, GdalPath)):
        return path
    return GdalPath.parse(str(path)) or Path(path)


@dataclass(frozen=True)
class SceneFiles:
    """What the user pointed at as one scene: a multi-band file, or single-band files (per-band
    products, possibly at several resolutions and from several products) that belong together, or
    the assets of one or more STAC Items (:mod:`clay.runtime.scenes.stac`), with what the Items declare
    about each."""

    path: Path | GdalPath
    files: tuple[Path | GdalPath, ...]
    # files beside them that are not Clay bands (a STAC Item's: "<item id>:<asset key>")
    ignored: tuple[Path | GdalPath | str, ...] = ()
    label: str | None = None  # the scene's name where it is not the path's (a STAC Item's id)
    assets: tuple[AssetFacts, ...] = ()  # what STAC Items declare about the files, one per file
    problem: str | None = None  # why the scene cannot be opened, found before it is (a bad STAC Item)
    sensor_note: str | None = None  # Clay v1.5: how the scene's sensor was told (clay.runtime.scenes.sensing)
    # A STAC Item of a Clay v1.5 sensor whose bands Clay v0 does not have (Landsat...): why a Clay v0
    # engine refuses it (its assets hold that sensor's bands, not Clay v0's)
    v0_problem: str | None = None

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        return self.path.stem if self.path.is_file() else self.path.name

    def declared(self, path: Path | GdalPath) -> AssetFacts | None:
        """What a STAC Item declares about one of the scene's files (``None``: a plain file)."""
        return next((asset for asset in self.assets if asset.path == path), None)


@dataclass(frozen=True)
class ItemFacts:
    """What an Item declares for its whole scene."""

    id: str
    source: str  # its self link, else the file or URL it was read from: the rows' source_url
    collection: str | None
    date: Date
    date_field: str  # "datetime", or "start_datetime" where datetime is null
    s2_harmonised: bool | None  # earthsearch:boa_offset_applied
    s2_baseline: str | None  # s2:processing_baseline
    platform: str | None = None  # the Item's platform and constellation (which sensor: clay.runtime.scenes.sensing)
    constellation: str | None = None


@dataclass(frozen=True)
class AssetFacts:
    """What an Item declares about one asset, one file of the scene. Per-band tuples follow the
    file's bands (its alpha band, if any, left out); ``None``: not declared."""

    item: ItemFacts
    key: str
    path: Path | GdalPath
    bands: tuple[str | None, ...]  # the Clay band each band is (None: not one the scene takes from here)
    scales: tuple[float | None, ...]
    offsets: tuple[float | None, ...]
    nodata: tuple[float | None, ...]
    units: tuple[str | None, ...]
    data_types: tuple[str | None, ...]
    epsg: int | None = None  # proj:epsg / proj:code of the asset, else of the Item
    shape: tuple[int, int] | None = None  # proj:shape (rows, columns)
    transform: tuple[float, ...] | None = None  # proj:transform (a, b, c, d, e, f)
    jp2: bool = False  # a JPEG 2000 copy (Earth Search's *-jp2: the archive's original files)
    chosen: tuple[tuple[str, str], ...] = ()  # (band, why this asset over its copies at other resolutions)

    @property
    def label(self) -> str:
        return f"{self.item.id}:{self.key}"
