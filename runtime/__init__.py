"""Torch-free Clay inference: engines, scenes and GeoParquet output."""

from .api import ClayEmbedder
from .engine import EngineError, open_engine
from .metadata import EngineMetadata
from .pipeline import RunOptions
from .scene import SceneError

__all__ = ["ClayEmbedder", "EngineError", "EngineMetadata", "RunOptions", "SceneError", "open_engine"]
