"""Files under their final names only when complete: the ``.partial`` and staging names a scene's
outputs are written under, the durable publish (fsync, rename, fsync of the folder), the files one
scene is written to (:class:`ScenePaths`), and :class:`OutputError`, which names the file that could
not be written."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import first_line

PARTIAL_SUFFIX = ".partial"


class OutputError(RuntimeError):
    """An output file that could not be written; the message names it and the reason."""


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def staging_path(path: Path) -> Path:
    """The folder a file built from intermediate files (the patch raster) is staged in while its scene runs."""
    return path.with_name(path.name + ".staging" + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class ScenePaths:
    """The files one scene is written to: its chip file (the done-marker) and, when asked for, its
    patch file and patch raster."""

    chips: Path
    patches: Path | None = None
    raster: Path | None = None

    @classmethod
    def for_chip_file(cls, chips: Path, patch_embeddings: bool, patch_raster: bool = False) -> ScenePaths:
        stem = chips.name.removesuffix(".parquet")
        return cls(chips, chips.with_name(f"{stem}.patches.parquet") if patch_embeddings else None,
                   chips.with_name(f"{stem}.patches.tif") if patch_raster else None)  # fmt: skip

    @property
    def files(self) -> tuple[Path, ...]:
        """In the order they are published: the chip file, the done-marker, last."""
        return tuple(path for path in (self.raster, self.patches, self.chips) if path is not None)

    def complete(self) -> bool:
        """Whether a run already finished this scene: every file it would write is published."""
        return all(path.is_file() for path in self.files)

    def clear_partials(self) -> None:
        """Remove what a killed run left under ``.partial`` names."""
        for path in self.files:
            partial_path(path).unlink(missing_ok=True)
        if self.raster is not None:
            shutil.rmtree(staging_path(self.raster), ignore_errors=True)


class naming:
    """Turns an error while writing ``path`` (``kinds``: OSError unless told) into an OutputError
    that names the file and the reason."""

    def __init__(self, path: Path, kinds: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self.path, self.kinds = path, kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, self.kinds) and not isinstance(exc, OutputError):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise OutputError(f"{self.path}: cannot write ({reason})") from None
        return False


def fsync(path: Path) -> None:
    """fsync a file, or a directory (its entries: a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, path: Path) -> Path:
    """Make a complete ``partial`` file durable under ``path``: fsync it, rename it, fsync the folder."""
    fsync(partial)
    os.replace(partial, path)
    fsync(path.parent)
    return path
