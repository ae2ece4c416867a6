"""Which product a file comes from, read from its name and its folders' names: the product decides
what its band names mean.

Band names match by pattern (``B8.tif``, a description ``B08``), and other products reuse Sentinel-2's
labels for other bands: Landsat 8/9's ``B8`` is the panchromatic band and ``B5`` its NIR, HLS L30's
``B05`` is Landsat's NIR where Sentinel-2's B05 is a red edge. A file whose name says it is such a
product is therefore never matched to Clay v0's Sentinel-2 bands: the scene is refused in one line
naming the product. Harmonised Landsat Sentinel-2 ``S30`` granules hold Sentinel-2 bands under
Sentinel-2's names and are accepted, with what differs recorded.

Names, from each product's own documentation:
- Landsat Collection 1/2 product ids ``LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX`` (USGS, "Landsat
  Collection 2 Data Dictionary": ``LC08_L2SP_129048_20230501_20230509_02_T1``);
- HLS v2.0 granules ``HLS.{L30,S30}.T{tile}.{YYYYDDD}T{HHMMSS}.v2.0`` (NASA LP DAAC, HLS v2.0 user
  guide, section 6);
- MODIS products ``MOD09GA.A2020054.h27v07.061...`` (Terra ``MOD``, Aqua ``MYD``, LP DAAC);
- NAIP quarter quads ``m_3807537_ne_18_060_20220511`` (USDA FSA APFO naming);
- Sentinel-2 Level-1C products ``S2A_MSIL1C_…`` (ESA "Sentinel-2 Products Specification Document":
  top-of-atmosphere reflectance; Clay v0 was trained on Level-2A surface reflectance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

#: The HLS S30 facts recorded for a scene accepted as Sentinel-2 (HLS v2.0 user guide): the
#: Sentinel-2 bands, atmospherically corrected by LaSRC (not Sen2Cor), adjusted to Landsat 8 OLI's
#: bandpasses, BRDF-normalised, on a 30 m grid, reflectance × 10 000 without the L2A +1000 offset.
HLS_S30_NOTE = ("HLS S30 v2.0: Sentinel-2 surface reflectance by LaSRC, adjusted to Landsat 8 OLI bandpasses and "
                "BRDF-normalised, at 30 m, without the L2A +1000 offset; Clay v0 was trained on Sentinel-2 L2A "
                "(Sen2Cor) at 10 m")  # fmt: skip
_CLAY_V0 = "Clay v0 takes Sentinel-2 L2A bands, Sentinel-1 VV/VH and a DEM"


@dataclass(frozen=True)
class Product:
    """A product recognised in a name: what it is, the name it was read from, and, for Clay v0,
    either why its files are refused (``refused``) or what is recorded when they are taken;
    ``sensor``: the Clay v1.5 sensor (:mod:`clay.runtime.sensors`) its files are (``None``: none).
    ``v1_5_refused``: why a Clay v1.5 engine refuses it; ``v1_5_note``: what is recorded."""

    kind: str
    name: str
    refused: str | None = None
    note: str | None = None
    sensor: str | None = None
    v1_5_refused: str | None = None
    v1_5_note: str | None = None


#: HLS L30 v2.0 stores surface reflectance × 10 000 (scale 0.0001, no offset: HLS v2.0 user guide,
#: table 6), where Landsat C2 L2 stores DN = (reflectance + 0.2) / 2.75e-5: recorded with its scale.
HLS_L30_NOTE = ("HLS L30 v2.0: Landsat 8/9 OLI surface reflectance x 10000 (LaSRC, BRDF-normalised, on the S2 "
                "MGRS grid), brought to Collection 2 Level-2 DNs; Clay v1.5 was trained on Collection 2 Level-2 SR")
#: Clay v1.5 facts per product (v0's refusals above are unchanged): pattern index → (sensor, refused, note).
#: Landsat: only 8/9 OLI (LC08/LC09: stacchip landsat_processor.py queries LANDSAT_8 and LANDSAT_9) whose
#: band numbers are the table's; Level-2 SP/SR products → landsat-c2l2-sr, Level-1 → landsat-c2l1.


#: (pattern, what the product is, why Clay v0 refuses it or None, the note recorded when accepted)
PRODUCTS: tuple[tuple[re.Pattern, str, str | None, str | None], ...] = (
    (re.compile(r"(?<![A-Za-z0-9])L([COTEM])0([4-9])_L([12])[A-Z]{2}_\d{6}_\d{8}"), "Landsat {num} Collection product",
     f"its bands B1…B11 are Landsat's (B5 is NIR, B8 panchromatic), not Sentinel-2's; {_CLAY_V0}", None),
    (re.compile(r"HLS\.L30\.T\d{2}[A-Z]{3}\.\d{7}T\d{6}"), "HLS L30 (Landsat) granule",
     f"its bands are Landsat 8/9 OLI's under HLS names (B05 is NIR, not Sentinel-2's red edge); {_CLAY_V0}", None),
    (re.compile(r"HLS\.S30\.T\d{2}[A-Z]{3}\.\d{7}T\d{6}"), "HLS S30 (Sentinel-2) granule", None, HLS_S30_NOTE),
    (re.compile(r"(?<![A-Za-z0-9])M[OY]D\d{2}[A-Z0-9]*\.A\d{7}\."), "MODIS product",
     f"MODIS bands at 250-1000 m are not Sentinel-2's; {_CLAY_V0}", None),
    (re.compile(r"(?<![A-Za-z0-9])m_\d{7}_(?:ne|nw|se|sw)_\d{2}_\d{3}_\d{8}"), "NAIP image",
     f"NAIP's red, green, blue and NIR at 0.3-1 m are not Sentinel-2's bands; {_CLAY_V0}", None),
    (re.compile(r"S2[A-D]_MSIL1C_\d{8}T\d{6}"), "Sentinel-2 Level-1C product",
     "Level-1C holds top-of-atmosphere reflectance; Clay v0 was trained on Level-2A surface reflectance "
     "(process it with Sen2Cor, or use the L2A product)", None),
)  # fmt: skip


#: Products Clay v0 takes as they are (Sentinel-2 L2A, Sentinel-1 RTC) named here for Clay v1.5's
#: sensor choice: ESA L2A product names, Earth Search ids (``S2B_10TFK_20210713_0_L2A``,
#: ``S2A_T20HNJ_20240311T140636_L2A``), Planetary Computer's S1 RTC ids and OPERA RTC-S1 granules.
V15_ONLY: tuple[tuple[re.Pattern, str, str], ...] = (
    (re.compile(r"S2[A-D]_MSIL2A_\d{8}T\d{6}|S2[A-D]_(?:T?\d{1,2}[A-Z]{3})_\d{8}(?:T\d{6})?(?:_\d+)?_L2A"),
     "Sentinel-2 Level-2A product", "sentinel-2-l2a"),
    (re.compile(r"S1[A-D]_IW_GRD[HM]_1S[DS][VH]_\d{8}T\d{6}\w*_rtc|OPERA_L2_RTC-S1_", re.IGNORECASE),
     "Sentinel-1 RTC product", "sentinel-1-rtc"),
)  # fmt: skip


def _v15(kind: str, match: re.Match) -> tuple[str | None, str | None, str | None]:
    """(sensor, why Clay v1.5 refuses it, note) for a product of ``PRODUCTS``."""
    if kind.startswith("Landsat"):
        if match.group(1) != "C" or match.group(2) not in "89":
            return None, ("Clay v1.5 was trained on Landsat 8/9 OLI (LC08, LC09) only; other Landsat instruments "
                          "number their bands differently"), None  # fmt: skip
        return ("landsat-c2l2-sr" if match.group(3) == "2" else "landsat-c2l1"), None, None
    if kind.startswith("HLS L30"):
        return "landsat-c2l2-sr", None, HLS_L30_NOTE
    if kind.startswith("HLS S30"):
        return "sentinel-2-l2a", None, HLS_S30_NOTE
    if kind == "MODIS product":
        return "modis", None, None
    if kind == "NAIP image":
        return "naip", None, None
    return None, ("Clay v1.5 was trained on Sentinel-2 Level-2A, not Level-1C (process it with Sen2Cor, or use the "
                  "L2A product)"), None  # fmt: skip


def products_in(path) -> list[Product]:
    """Every product named by the file's name and its three nearest folders, nearest first."""
    found = []
    for part in reversed(PurePosixPath(str(path).replace("\\", "/")).parts[-4:]):
        for pattern, kind, refused, note in PRODUCTS:
            match = pattern.search(part)
            if match:
                sensor, v15_refused, v15_note = _v15(kind, match)
                kind = kind.format(num=match.group(2)) if kind.startswith("Landsat") else kind
                found.append(Product(kind, part, refused, note, sensor, v15_refused, v15_note))
                break
        else:
            for pattern, kind, sensor in V15_ONLY:
                if pattern.search(part):
                    found.append(Product(kind, part, None, None, sensor))
                    break
    return found


def product_of(path) -> Product | None:
    """The product Clay v0 reads the file as, named by its name or its three nearest folders (nearest
    first; products Clay v0 takes as they are, S2 L2A and S1 RTC, are passed over), or ``None``."""
    return next((p for p in products_in(path) if p.refused or p.note), None)


#: HLS v2.0 file names end with the band: ``HLS.S30.T48QUE.2024060T033701.v2.0.B02.tif``.
_HLS_FILE = re.compile(r"^HLS\.[LS]30\..*\.v\d+\.\d+\.([A-Za-z0-9]+)$")


#: Landsat Collection 2 per-band files: ``LC08_L2SP_129048_20230501_20230509_02_T1_SR_B2.TIF``.
_LANDSAT_FILE = re.compile(r"^L[COTEM]0\d_L[12][A-Z]{2}_\d{6}_\d{8}_\d{8}_\d{2}_[A-Z0-9]{2}_([A-Z0-9_]+)$")


#: Sentinel-2 SAFE per-band images (ESA's product format, ``GRANULE/*/IMG_DATA/``): L2A
#: ``R10m/T48QUE_20230601T033541_B02_10m.jp2`` (each band at its native and coarser resolutions,
#: ``AOT``/``WVP``/``SCL``/``TCI`` beside them), L1C ``T48QUE_20230601T033541_B02.jp2``. Groups: the
#: band, the resolution in metres (L2A only).
_S2_SAFE_FILE = re.compile(r"^T\d{2}[A-Z]{3}_\d{8}T\d{6}_([A-Z0-9]+?)(?:_(\d{2})m)?$")


def band_label(path) -> str:
    """The part of a per-band file's name that names its band: the last field of an HLS file name
    (``….v2.0.B02``), what follows a Landsat product id (``…_T1_SR_B2`` → ``SR_B2``), the band of a
    Sentinel-2 SAFE image (``T48QUE_20230601T033541_B02_10m`` → ``B02``), else the name without its
    suffix (``B02``, ``T48QUE_20200223_B02``)."""
    stem = PurePosixPath(str(path).replace("\\", "/")).stem
    match = _HLS_FILE.match(stem) or _LANDSAT_FILE.match(stem) or _S2_SAFE_FILE.match(stem)
    return match.group(1) if match else stem


def safe_resolution(path) -> int | None:
    """The resolution in metres a Sentinel-2 L2A SAFE image's name gives (``…_B02_20m`` → 20), or
    ``None``: L2A products hold each band at its native resolution and resampled to coarser ones."""
    match = _S2_SAFE_FILE.match(PurePosixPath(str(path).replace("\\", "/")).stem)
    return int(match.group(2)) if match and match.group(2) else None
