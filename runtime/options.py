"""How scenes are read and run: one options object for ``clay-run``'s flags and the Python API."""

from __future__ import annotations

import math

import os
from dataclasses import dataclass
from datetime import date as Date

from .errors import SceneError
from .metadata import EngineMetadata
from .resampling import check_resampling
from .sensors import SENSORS

#: How the chip grid treats a scene's right and bottom remainders (``--edge``; the rule is
#: :func:`clay.runtime.scenes.grid.chip_starts`): defined here, with the run's other choices.
EDGE_MODES = ("shift", "pad", "drop")
SAR_UNITS = ("auto", "db", "linear")
RASTER_DTYPES = ("float32", "float16", "int8")  # clay.runtime.outputs.patch_raster says how each is stored
#: float16 is named (the issue and users ask for it) and refused, in one line that says why.
FLOAT16_REFUSED = (
    "--raster-dtype float16 is not offered: the GDAL the pinned rasterio bundles (3.10) has no Float16 type "
    "(GDAL 3.11 adds one) and its half-float writer took minutes for one 768-band raster; use float32, or int8 "
    "(quantised per band, cosine >= 0.99)"
)


#: Seconds a remote read may go without progress before it is retried, then fails its scene
#: (``--http-timeout``; how GDAL is told: :mod:`clay.runtime.scenes.remote`).
DEFAULT_HTTP_TIMEOUT = 30.0


def cpu_count() -> int:
    """The cores this process may use (its affinity, not the machine's total)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class RunOptions:
    """Every choice a run makes, with ``clay-run``'s defaults.

    ``date`` overrides the files' acquisition date; ``sar_units`` says whether VH/VV hold linear
    power or dB (``auto``: the band's unit metadata, else a mostly negative band is refused);
    ``s2_offset``, when set, is subtracted from every scene's S2 DNs instead of the offset each
    scene's metadata declares (``None``: per scene, see :mod:`clay.runtime.scenes.units`). ``resampling``
    (``nearest`` | ``bilinear``) overrides how bands off the scene's grid are resampled onto it
    (``None``: as the engine's metadata says its weights were trained, see
    :mod:`clay.runtime.resampling`). ``readers`` is the
    number of chip-reader threads (default: one per core). ``keep_going`` finishes the other scenes
    when one fails; ``resume`` skips scenes whose outputs are complete. ``patch_raster`` also writes
    each scene's patch vectors as a Cloud-Optimized GeoTIFF of ``raster_dtype``
    (:mod:`clay.runtime.outputs.patch_raster`). ``http_timeout``: seconds a remote read (a
    ``/vsicurl/`` or ``https://`` file, an object store, a STAC Item over http) may make no
    progress before it is retried and, after 3 retries, fails its scene in one line
    (:mod:`clay.runtime.scenes.remote`).
    """

    batch_size: int | None = None
    edge: str = "shift"
    max_nodata: float = 0.5
    patch_embeddings: bool = False
    patch_raster: bool = False
    raster_dtype: str = "float32"
    date: Date | None = None
    sar_units: str = "auto"
    s2_offset: float | None = None
    resampling: str | None = None
    readers: int | None = None
    keep_going: bool = False
    resume: bool = False
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    # Clay v1.5: every scene's sensor (clay.runtime.sensors name) instead of what its STAC Item,
    # product names or band names say (clay.runtime.scenes.sensing); None: per scene.
    sensor: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.date, str):  # RunOptions(date="2020-02-23"), as --date takes it
            try:
                object.__setattr__(self, "date", Date.fromisoformat(self.date.strip()[:10]))
            except ValueError:
                raise ValueError(f"date must be a datetime.date or YYYY-MM-DD, not {self.date!r}") from None
        elif self.date is not None and not isinstance(self.date, Date):
            raise ValueError(f"date must be a datetime.date or YYYY-MM-DD, not {type(self.date).__name__}")
        if self.edge not in EDGE_MODES:
            raise ValueError(f"edge must be one of {', '.join(EDGE_MODES)}, not {self.edge!r}")
        if self.raster_dtype not in RASTER_DTYPES:
            raise ValueError(f"raster_dtype must be one of {', '.join(RASTER_DTYPES)}, not {self.raster_dtype!r}")
        if self.raster_dtype == "float16":
            raise ValueError(FLOAT16_REFUSED)
        if self.sar_units not in SAR_UNITS:
            raise ValueError(f"sar_units must be one of {', '.join(SAR_UNITS)}, not {self.sar_units!r}")
        check_resampling(self.resampling)
        if self.s2_offset is not None and not math.isfinite(self.s2_offset):  # NaN would blank every S2 chip
            raise ValueError(f"s2_offset must be a finite number of DNs, not {self.s2_offset}")
        if self.sensor is not None and self.sensor not in SENSORS:
            raise ValueError(f"sensor must be one of Clay v1.5's: {', '.join(SENSORS)}, not {self.sensor!r}")
        if not 0 <= self.max_nodata <= 1:
            raise ValueError(f"max_nodata must be between 0 and 1, not {self.max_nodata}")
        if not self.http_timeout >= 1:  # curl counts whole seconds; NaN is refused too
            raise ValueError(f"http_timeout must be at least 1 second, not {self.http_timeout}")
        for name in ("batch_size", "readers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")

    @property
    def needs_patches(self) -> bool:
        """Whether the engine must give patch embeddings (a patch file or a patch raster is asked for)."""
        return self.patch_embeddings or self.patch_raster

    def patch_request(self, cli: bool = False) -> str:
        """What asks for patch embeddings, in the caller's terms (``clay-run``'s flags, or these
        fields), for :func:`check_patch_embeddings`' message."""
        asking = [(flag, f"{name}=True") for flag, name in (("--patch-embeddings", "patch_embeddings"),
                                                            ("--patch-raster", "patch_raster")) if getattr(self, name)]  # fmt: skip
        return " and ".join(flag if cli else field for flag, field in asking)

    @property
    def reader_count(self) -> int:
        return self.readers or cpu_count()


def check_patch_embeddings(metadata: EngineMetadata, wanted: bool,
                           asked_by: str = "patch_embeddings=True") -> None:
    """Patch embeddings need an engine with the ``patch_embeddings`` output; the error names what
    asked for them in the caller's terms (``RunOptions``' field, or ``clay-run``'s flag)."""
    if wanted and not metadata.has_patch_embeddings:
        raise SceneError(f"{asked_by} needs an engine with patch embeddings (exported with clay-export "
                         "--patch-embeddings); this one has only the chip embedding")  # fmt: skip
