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
    either why its files are refused (``refused``) or what is recorded when they are taken."""

    kind: str
    name: str
    refused: str | None = None
    note: str | None = None


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


def product_of(path) -> Product | None:
    """The product named by the file's name or its three nearest folders (nearest first), or ``None``."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts[-4:]
    for part in reversed(parts):
        for pattern, kind, refused, note in PRODUCTS:
            match = pattern.search(part)
            if match:
                if kind.startswith("Landsat"):
                    kind = kind.format(num=match.group(2))
                return Product(kind, part, refused, note)
    return None


#: HLS v2.0 file names end with the band: ``HLS.S30.T48QUE.2024060T033701.v2.0.B02.tif``.
_HLS_FILE = re.compile(r"^HLS\.[LS]30\..*\.v\d+\.\d+\.([A-Za-z0-9]+)$")


def band_label(path) -> str:
    """The part of a per-band file's name that names its band: the last field of an HLS file name
    (``….v2.0.B02``), else the name without its suffix (``B02``, ``T48QUE_20200223_B02``)."""
    stem = PurePosixPath(str(path).replace("\\", "/")).stem
    match = _HLS_FILE.match(stem)
    return match.group(1) if match else stem
