"""Acquisition dates: when a scene was sensed, from what its files say, best source first.

A scene's date feeds the model (Clay v0's time encoding) and the ``date`` column, so it must be the
sensing time, not when a file was processed or copied. A date a catalogue declares for the file
(a STAC Item's ``datetime``) comes first; then, from the file itself, most trusted first:

1. acquisition tags: GDAL's IMAGERY metadata domain (``ACQUISITIONDATETIME``, the standard home of
   the sensing time), then default-domain tags that readers and writers of satellite products use
   (``date`` as in Clay's release chips, ``ACQUISITION_DATE``, ``SENSING_TIME``,
   ``DATATAKE_1_DATATAKE_SENSING_START``, ``PRODUCT_START_TIME``, ``datetime``…);
2. a product name in the file's or its folders' names: Sentinel-2 and Sentinel-1 product names
   (``S2A_MSIL2A_20200223T032701_…``, ``S1A_IW_GRDH_1SDV_20200607T…``), Earth Search item ids
   (``S2B_48QUE_20200223_0_L2A``), Landsat product ids (``LC08_L2SP_…_20200607_…``), HLS names
   (``HLS.S30.T48QUE.2020054T032659…``) and NAIP image names (``m_3807537_ne_18_060_20220511``);
3. a date written ``YYYYMMDD`` on its own in the file's or its folders' names (``s2l2a-20200604``,
   ``…_20200223.tif``), as people name what they download: taken, with a warning, since such a
   date may also be a processing or download date;
4. the TIFF ``DateTime`` tag, last: TIFF defines it as the file's creation time, often the
   processing date, so a date from it comes with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timedelta
from pathlib import PurePosixPath

#: Tags that hold the sensing time, in the order they are trusted: (metadata domain, key).
ACQUISITION_TAGS: tuple[tuple[str, str], ...] = (
    ("IMAGERY", "ACQUISITIONDATETIME"),
    ("", "date"), ("", "DATE"),
    ("", "ACQUISITIONDATETIME"), ("", "ACQUISITION_DATETIME"), ("", "ACQUISITION_DATE"),
    ("", "SENSING_TIME"), ("", "SENSING_DATE"), ("", "DATATAKE_1_DATATAKE_SENSING_START"),
    ("", "PRODUCT_START_TIME"), ("", "datetime"), ("", "start_datetime"),
)  # fmt: skip
TIFF_DATETIME = ("", "TIFFTAG_DATETIME")

#: Product-name patterns whose first group is the sensing date (``YYYYMMDD``, or ``YYYYDDD`` for HLS).
PRODUCT_NAMES: tuple[tuple[str, re.Pattern], ...] = (
    ("Sentinel-2 product name", re.compile(r"S2[A-D]_MSI(?:L1C|L2A)_(\d{8})T\d{6}")),
    ("Sentinel-1 product name", re.compile(r"S1[A-D]_[A-Z0-9]{2}_[A-Z0-9_]{4}_[A-Z0-9]{4}_(\d{8})T\d{6}")),
    ("Earth Search item id", re.compile(r"S2[A-D]_\d{1,2}[A-Z]{3}_(\d{8})_\d+_L[12][AC]")),
    ("Landsat product id", re.compile(r"L[COTEM]0\d_L[12][A-Z]{2}_\d{6}_(\d{8})_\d{8}_\d{2}_[A-Z0-9]{2}")),
    ("HLS granule name", re.compile(r"HLS\.[LS]30\.T\d{2}[A-Z]{3}\.(\d{7})T\d{6}")),
    # USDA FSA APFO NAIP quarter quads m_<quad>_<quarter>_<utm zone>_<resolution>_<image date>
    ("NAIP image name", re.compile(r"(?<![A-Za-z0-9])m_\d{7}_(?:ne|nw|se|sw)_\d{2}_\d{3}_(\d{8})")),
)


#: A compact date standing alone in a name: not part of a longer run of digits (an id, a time).
COMPACT_DATE = re.compile(r"(?<![0-9])((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?![0-9])")


@dataclass(frozen=True)
class DatedFile:
    """A file's sensing date and where it came from (``source``: the tag or name pattern)."""

    date: Date
    source: str
    trusted: bool  # False for the TIFF DateTime (a creation time)


def parse_date(text: str) -> Date:
    """A date from the forms satellite metadata uses: ISO 8601 (``2020-02-23``,
    ``2020-02-23T03:37:01Z``), TIFF ``2020:02:23 03:37:01``, compact ``20200223``. Raises ValueError."""
    text = text.strip()
    head = text[:10]
    if len(head) == 10 and head[4] in "-:" and head[7] in "-:":
        return Date.fromisoformat(head.replace(":", "-"))
    if re.fullmatch(r"\d{8}(T.*)?", text):
        return datetime.strptime(text[:8], "%Y%m%d").date()
    raise ValueError(f"not a date: {text!r}")


def date_from_tags(domains: dict[str, dict[str, str]]) -> DatedFile | None:
    """The sensing date among a file's tags (``domains``: metadata domain → tags, ``""`` the
    default domain), or ``None``. A tag that is present but unreadable raises ValueError naming it."""
    for domain, key in ACQUISITION_TAGS:
        text = domains.get(domain, {}).get(key)
        if text:
            where = f"{domain} {key}" if domain else key
            try:
                return DatedFile(parse_date(text), f"tag {where}", True)
            except ValueError:
                raise ValueError(f"acquisition date tag {where}={text!r} is not a date") from None
    return None


def date_from_name(path) -> DatedFile | None:
    """The sensing date in a product name among the file's name and its three nearest folders."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts[-4:]
    for part in reversed(parts):
        for kind, pattern in PRODUCT_NAMES:
            match = pattern.search(part)
            if not match:
                continue
            digits = match.group(1)
            if len(digits) == 7:  # HLS: year and day of year
                day = Date(int(digits[:4]), 1, 1) + timedelta(days=int(digits[4:]) - 1)
            else:
                day = datetime.strptime(digits, "%Y%m%d").date()
            return DatedFile(day, f"{kind} {part}", True)
    return None


def date_from_compact_name(path) -> DatedFile | None:
    """A ``YYYYMMDD`` date standing alone in the file's name or its three nearest folders (nearest
    first; the first valid date in a name), or ``None``. Not trusted: it may not be the sensing date."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts[-4:]
    for part in reversed(parts):
        for match in COMPACT_DATE.finditer(part):
            try:
                day = Date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            except ValueError:  # 20210231
                continue
            return DatedFile(day, f"the date in the name {part}", False)
    return None


def date_from_tiff_datetime(domains: dict[str, dict[str, str]]) -> DatedFile | None:
    text = domains.get(TIFF_DATETIME[0], {}).get(TIFF_DATETIME[1])
    if not text:
        return None
    try:
        return DatedFile(parse_date(text), "TIFF DateTime tag", False)
    except ValueError:
        return None


def file_date(path, domains: dict[str, dict[str, str]], declared: DatedFile | None = None) -> DatedFile | None:
    """One file's sensing date: what a catalogue declares for it (``declared``: a STAC Item's
    ``datetime``, see :mod:`clay.runtime.scenes.stac`), else by the order in the module docstring, or ``None``."""
    return (declared or date_from_tags(domains) or date_from_name(path) or date_from_compact_name(path)
            or date_from_tiff_datetime(domains))  # fmt: skip
