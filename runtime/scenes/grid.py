"""The chip grid of a scene and the patch grid of a chip: pure functions of sizes, no I/O.

Kept apart from the reader (as TorchGeo keeps its grid sampler apart from its datasets), so the
CLI's progress count, the pipeline, the Ray path and training's window choice all cut scenes the
same way without opening a file.
"""

from __future__ import annotations

from dataclasses import dataclass

from rasterio.windows import Window

from ..options import EDGE_MODES


@dataclass(frozen=True)
class Chip:
    """One chip of the grid: pixel origin in the scene and the part of the window inside it."""

    row: int
    col: int
    height: int  # rows of real pixels (< chip size only for padded chips)
    width: int

    @property
    def window(self) -> Window:
        """The scene pixels the chip reads (its real pixels, padding excluded)."""
        return Window(self.col, self.row, self.width, self.height)


def chip_starts(length: int, size: int, edge: str) -> list[int]:
    """Chip origins along one axis. Remainders: a last chip shifted back inside (``shift``), a
    padded chip (``pad``) or nothing (``drop``, the Clay release); an axis shorter than a chip
    gets one padded chip whatever the mode."""
    if edge not in EDGE_MODES:
        raise ValueError(f"unknown edge mode {edge!r}; choose from {', '.join(EDGE_MODES)}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    remainder = length - (starts[-1] + size)
    if remainder:
        if edge == "shift":
            starts.append(length - size)
        elif edge == "pad":
            starts.append(starts[-1] + size)
    return starts


def chip_grid(height: int, width: int, size: int, edge: str = "shift") -> list[Chip]:
    """The chips of a ``height`` × ``width`` scene, row-major (the order outputs are written in)."""
    return [
        Chip(r, c, min(size, height - r), min(size, width - c))
        for r in chip_starts(height, size, edge)
        for c in chip_starts(width, size, edge)
    ]


@dataclass(frozen=True)
class PatchCell:
    """One patch of a chip: its index in the chip's patch grid and its pixel origin in the scene."""

    i: int
    j: int
    row: int
    col: int


def patch_cells(chip: Chip, chip_size: int, patch_size: int) -> list[PatchCell]:
    """The patches of a chip that hold real pixels (cells wholly in padding are left out)."""
    side = chip_size // patch_size
    return [
        PatchCell(i, j, chip.row + i * patch_size, chip.col + j * patch_size)
        for i in range(side)
        for j in range(side)
        if i * patch_size < chip.height and j * patch_size < chip.width
    ]
