"""The cell grid of a patch raster and which patch each cell holds: pure functions of sizes, no I/O.

**Grid.** One cell per patch (the engine's patch size ``p``: 32 × 32 px for Clay v0, 8 × 8 for v1.5; 32 in
what follows) of the scene's grid, anchored at the scene's origin: the scene's
geotransform times ``Affine.scale(32)`` (so south-up, rotated and sheared grids hold), ⌈W/32⌉ ×
⌈H/32⌉ cells. The last column and row of cells reach past the scene's edge by the remainder.

**Which patch a cell holds** (exactly one patch's vector, never a blend): of the patches of kept
chips that contain the centre of the cell's real pixels (edges included), the one whose own centre
is nearest to it (Euclidean, in scene pixels); ties go to the patch first in grid order (chips
row-major, then patches row-major). A cell whose centre no kept patch contains is nodata. Centres
are those of real pixels (a cell or patch clipped at the scene's edge counts what is inside it). So
a chip on the 32-px grid gives each of its cells its own patch (distance 0), and a shifted edge chip
(whose patches straddle cells when the remainder is not a multiple of 32) fills the cells no aligned
kept chip holds: the right and bottom remainders, and its overlap where the aligned neighbour was
skipped. Every cell whose centre lies in a kept chip has a value; cells of skipped chips, dropped
remainders or nothing else are nodata.

**Overviews** are nearest-neighbour, so that every value in the file is a patch's vector: cell (r, c)
of level f (2, 4, …) is full-resolution cell (min(r·f + f/2, H − 1), min(c·f + f/2, W − 1)), the cell
GDAL's nearest resampling picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine

from ..scenes.grid import Chip

#: Uncompressed bytes of one COG tile at most (every band of a square of cells, pixel-interleaved):
#: a reader decodes a whole tile to get one cell. GDAL's default tile (512², one float32 band) is
#: 1 MiB; 4 MiB keeps 768-dim float32 tiles at 32 × 32 cells (10 km of 10 m pixels).
TILE_BYTES = 4 << 20
MAX_BLOCK, MIN_BLOCK = 512, 16  # GDAL's COG default and TIFF's smallest tile side (a multiple of 16)


@dataclass(frozen=True)
class CellGrid:
    """``width`` × ``height`` cells of ``cell`` scene pixels over a scene of ``scene_width`` ×
    ``scene_height`` pixels, placed by ``transform`` (the scene's, scaled by ``cell``)."""

    width: int
    height: int
    cell: int
    scene_width: int
    scene_height: int
    transform: Affine

    @classmethod
    def of(cls, transform: Affine, width: int, height: int, cell: int) -> CellGrid:
        """The cells of a ``width`` × ``height`` px scene with geotransform ``transform``."""
        return cls(-(-width // cell), -(-height // cell), cell, width, height, transform @ Affine.scale(cell))


@dataclass(frozen=True)
class Claim:
    """The cells a chip may give a vector: rows ``row0…`` and columns ``col0…`` of the raster, the
    chip's patch (``i``, ``j``) containing each cell's centre, and the squared distance between the
    two centres (px²)."""

    row0: int
    col0: int
    i: np.ndarray  # [h] patch row per cell row
    j: np.ndarray  # [w] patch column per cell column
    distance2: np.ndarray  # [h, w] float32


def axis_claim(start: int, extent: int, cell: int, length: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Along one axis, for a chip whose real pixels are ``[start, start + extent)`` in a scene of
    ``length`` pixels: the first cell whose real centre the chip contains and, for it and the
    following ones, the patch containing that centre (on a patch boundary the lower one) and the
    distance of the two centres in pixels."""
    stop = start + extent
    first, last = start // cell, (stop - 1) // cell
    cells = np.arange(first, last + 1)
    centres = (cell * cells + np.minimum(cell * cells + cell, length)) / 2  # of each cell's real pixels
    inside = np.flatnonzero((centres >= start) & (centres <= stop))
    if not inside.size:
        return first, inside, inside.astype(np.float64)
    centres = centres[inside[0] : inside[-1] + 1]
    patch = np.maximum(np.ceil((centres - start) / cell).astype(np.int64) - 1, 0)
    patch_starts = start + cell * patch
    patch_centres = (patch_starts + np.minimum(patch_starts + cell, stop)) / 2
    return int(cells[inside[0]]), patch, np.abs(centres - patch_centres)


def chip_claim(chip: Chip, grid: CellGrid) -> Claim | None:
    """The cells whose centre lies in ``chip`` (None: none does), each with the patch containing it."""
    row0, i, dr = axis_claim(chip.row, chip.height, grid.cell, grid.scene_height)
    col0, j, dc = axis_claim(chip.col, chip.width, grid.cell, grid.scene_width)
    if not (i.size and j.size):
        return None
    return Claim(row0, col0, i, j, (dr[:, None] ** 2 + dc[None, :] ** 2).astype(np.float32))


@dataclass(frozen=True)
class Level:
    """One overview level: its ``factor`` and the full-resolution rows and columns its cells take
    (its height and width are their lengths)."""

    factor: int
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def of(cls, grid: CellGrid, factor: int) -> Level:
        def sources(length: int) -> np.ndarray:
            return np.minimum(np.arange(-(-length // factor)) * factor + factor // 2, length - 1)

        return cls(factor, sources(grid.height), sources(grid.width))

    @staticmethod
    def within(sources: np.ndarray, start: int, stop: int) -> slice:
        """The cells along an axis whose source lies in ``[start, stop)``: a contiguous range."""
        hit = np.flatnonzero((sources >= start) & (sources < stop))
        return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)


def block_size(dim: int, item_bytes: int, grid: CellGrid) -> int:
    """The COG's tile side: the largest power of two whose tile holds at most :data:`TILE_BYTES`
    (``dim`` bands of ``item_bytes``), between 16 and 512, and no larger than the raster needs."""
    side = 1 << int(math.log2(math.sqrt(TILE_BYTES / (dim * item_bytes))))
    needed = 1 << max(0, math.ceil(math.log2(max(grid.width, grid.height))))
    return max(MIN_BLOCK, min(side, MAX_BLOCK, needed))


def overview_levels(grid: CellGrid, block: int) -> list[Level]:
    """Factors 2, 4, … until the raster fits in one tile; at least one level (a small scene gets
    overviews too) unless the raster is a single cell."""
    side = max(grid.width, grid.height)
    if side < 2:
        return []
    count = max(1, math.ceil(math.log2(side / block)))
    return [Level.of(grid, 2**k) for k in range(1, count + 1)]
