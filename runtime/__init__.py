"""Torch-free Clay inference: scenes in, engines, GeoParquet and COG out.

The parts, imports pointing down only: :mod:`.scenes` (what the user pointed at and how a chip is
read), :mod:`.engines` (backends and their choice), :mod:`.outputs` (GeoParquet, patch rasters, the
preview) and :mod:`.serve` (``clay-serve``). What every part shares stays at this level: band facts
(``bands``), engine metadata (``metadata``), the table of artifact formats (``formats``), run options
(``options``), the shared errors (``errors``), timing and console guards; and on top of the parts,
the pipeline, the Python API (``api``), ``clay-run`` (``cli``) and the Ray job (``ray_job``).

The public names load on first use (PEP 562), so a service or benchmark that only needs an engine
(``clay.runtime.engines``) does not pay for, or need, the GeoTIFF and GeoParquet stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ClayEmbedder": ".api",
    "Engine": ".engines.base",
    "EngineError": ".engines.base",
    "EngineUnavailable": ".engines.base",
    "MetadataError": ".metadata",
    "RayJobError": ".ray_job",
    "open_engine": ".engines.choice",
    "EngineMetadata": ".metadata",
    "OutputError": ".outputs.publish",
    "RunOptions": ".options",
    "SceneError": ".errors",
    "SceneResult": ".pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
