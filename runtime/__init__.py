"""Torch-free Clay inference: engines, scenes and GeoParquet output.

The public names load on first use (PEP 562), so a service or benchmark that only needs an engine
(``clay.runtime.engine``) does not pay for, or need, the GeoTIFF and GeoParquet stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ClayEmbedder": ".api",
    "Engine": ".engine",
    "EngineError": ".engine",
    "open_engine": ".engine",
    "EngineMetadata": ".metadata",
    "OutputError": ".output",
    "RunOptions": ".options",
    "SceneError": ".files",
    "SceneResult": ".pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
