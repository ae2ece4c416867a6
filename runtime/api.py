"""Python API for services that embed the runtime: load an engine once, embed arrays or scenes.

    from clay.runtime import ClayEmbedder
    embedder = ClayEmbedder("clay.onnx")                 # or a .plan on a GPU machine
    vectors = embedder.embed(pixels, lonlat, dates)      # [B, dim] float32
    table = embedder.embed_scene("scene.tif")            # pyarrow Table, one row per chip

``ClayEmbedder`` is thread-safe: inference calls are serialised on the engine, scene reads use one
dataset handle per thread.
"""

from __future__ import annotations

import tempfile
from datetime import date as Date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .engine import Engine, open_engine
from .metadata import EngineMetadata
from .pipeline import RunOptions, SceneResult, embed_scene
from .scene import open_scene


class ClayEmbedder:
    """A loaded Clay engine and the scene pipeline around it."""

    def __init__(self, engine_path: str | Path, backend: str = "auto", threads: int | None = None) -> None:
        self.engine: Engine = open_engine(engine_path, backend, threads)

    @property
    def metadata(self) -> EngineMetadata:
        return self.engine.metadata

    def embed(
        self, pixels: np.ndarray, lonlat: np.ndarray, dates: np.ndarray, patch_embeddings: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed in-memory chips.

        ``pixels [B, C, 512, 512]``: raw values of the engine's bands (``metadata.bands``, spec order);
        ``lonlat [B, 2]``: chip centres in degrees; ``dates [B, 3]``: year, month, day.
        Returns ``[B, dim]`` float32, plus ``[B, G, 16, 16, dim]`` with ``patch_embeddings``.
        """
        meta = self.metadata
        pixels = np.asarray(pixels)
        expected = (len(meta.bands), meta.chip_size, meta.chip_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"pixels must be [B, {', '.join(map(str, expected))}] ({', '.join(meta.bands)}), got {list(pixels.shape)}")
        if not np.isfinite(pixels).all():
            raise ValueError("pixels hold NaN or infinite values; fill nodata before embedding")
        if patch_embeddings and not meta.has_patch_embeddings:
            raise ValueError("this engine was exported without --patch-embeddings")
        outputs = self.engine.infer(pixels, np.asarray(lonlat), np.asarray(dates))
        if patch_embeddings:
            return outputs["embedding"], outputs["patch_embeddings"]
        return outputs["embedding"]

    def embed_scene_to(self, scene: str | Path, output: str | Path, date: Date | None = None,
                       options: RunOptions | None = None) -> SceneResult:  # fmt: skip
        """Embed a GeoTIFF scene into a GeoParquet file (written atomically)."""
        opened = open_scene(scene, self.metadata, date)
        return embed_scene(self.engine, opened, Path(output), options or RunOptions())

    def embed_scene(self, scene: str | Path, date: Date | None = None, options: RunOptions | None = None) -> pa.Table:
        """Embed a GeoTIFF scene and return the chip table (same schema as the GeoParquet file)."""
        with tempfile.TemporaryDirectory(prefix="clay-") as tmp:
            result = self.embed_scene_to(scene, Path(tmp) / "chips.parquet", date, options)
            return pq.read_table(result.output)
