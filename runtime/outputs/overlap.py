"""Which ground each row of a scene's files holds alone: the ``overlap`` columns, by the patch raster's rule.

The shifted edge chips (``--edge shift``, the default) overlap their aligned neighbours, so a scene's
rows cover some ground twice. The patch raster already picks one patch per 32 × 32 px cell
(:mod:`clay.runtime.outputs.patch_grid`: of the kept chips' patches containing the cell's centre, the
nearest; ties to the first in grid order). :class:`GroundClaims` plays that rule over the kept chips
as they are written and records, per cell, which chip's patch holds it. From it:

- a **patch row** has ``overlap`` False when its patch holds at least one cell: the patch rows with
  ``overlap`` False are exactly the patches whose vectors the patch raster shows (a patch of a
  shifted chip may hold two adjacent cells: the last full cell and the clipped one past it), and
  True when every cell it could hold went to a nearer (or earlier) patch of another kept chip;
- a **chip row** has ``overlap_fraction``, the fraction of its cells (those whose centre it
  contains) held by another kept chip's patches, and ``overlap`` = ``overlap_fraction > 0``. Chips on
  the chip-size grid always hold all their cells (``overlap`` False); a shifted edge chip is True
  unless the chips it overlaps were skipped (too much nodata), in which case it holds their ground.

So ``WHERE NOT overlap`` takes each cell of ground once. What remains shared: a kept patch (or chip)
of a shifted edge chip may reach less than half a patch (< 16 px) into ground whose cells another row
holds, since the rule assigns cells by their centres.

A row is final once no chip after it in grid order could take one of its cells (:meth:`GroundClaims.settled`);
the writer holds back the few rows that are not (a shifted chip whose aligned neighbour was skipped)
until the scene's last chip, so the files keep grid order otherwise.
"""

from __future__ import annotations

import numpy as np

from ..scenes.grid import Chip
from .patch_grid import CellGrid, Claim, chip_claim


class GroundClaims:
    """The patch raster's cell assignment for one scene, played as its kept chips arrive in grid order.

    ``best [H, W]`` float32: the squared distance (px²) between each cell's centre and its patch's
    (inf: no kept patch yet); ``owner [H, W]`` int32: which patch holds the cell, as
    ``chip index × side² + i × side + j`` (the chip's index in ``chips``, the scene's whole grid;
    −1: none).
    """

    def __init__(self, grid: CellGrid, chips: list[Chip], chip_size: int) -> None:
        self.grid = grid
        self.side = chip_size // grid.cell
        self.chips = chips
        self.index = {(c.row, c.col): k for k, c in enumerate(chips)}
        self.best = np.full((grid.height, grid.width), np.inf, np.float32)
        self.owner = np.full((grid.height, grid.width), -1, np.int32)
        self._claims: dict[int, Claim | None] = {}
        starts = np.array([(c.row, c.col) for c in chips], np.int64).reshape(-1, 2)
        self._starts = starts

    def claim_of(self, chip: Chip) -> Claim | None:
        key = self.index[(chip.row, chip.col)]
        if key not in self._claims:
            self._claims[key] = chip_claim(chip, self.grid)
        return self._claims[key]

    def claim(self, chip: Chip) -> tuple[Claim, np.ndarray] | None:
        """Play ``chip`` (a kept chip, after every kept chip before it in grid order): the cells it
        may hold and, ``[h, w]`` bool, those it now holds (nearer than any patch before it)."""
        claim = self.claim_of(chip)
        if claim is None:
            return None
        key = self.index[(chip.row, chip.col)]
        h, w = claim.distance2.shape
        region = np.s_[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w]
        wins = claim.distance2 < self.best[region]
        self.best[region] = np.where(wins, claim.distance2, self.best[region])
        patch = key * self.side**2 + claim.i[:, None] * self.side + claim.j[None, :]
        self.owner[region] = np.where(wins, patch, self.owner[region])
        return claim, wins

    def _held(self, chip: Chip, claim: Claim) -> np.ndarray:
        """``[h, w]`` bool: which of the chip's cells its own patches hold now."""
        key = self.index[(chip.row, chip.col)]
        h, w = claim.distance2.shape
        owner = self.owner[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w]
        return owner // self.side**2 == key

    def settled(self, chip: Chip) -> bool:
        """Whether no chip after ``chip`` in grid order could take one of the cells it holds (a
        later chip takes a cell only when strictly nearer): its rows' overlap is then final."""
        claim = self.claim_of(chip)
        if claim is None:
            return True
        held = self._held(chip, claim)
        if not held.any():
            return True
        key = self.index[(chip.row, chip.col)]
        size = self.side * self.grid.cell
        near = np.all(np.abs(self._starts - (chip.row, chip.col)) < size, axis=1)
        near[: key + 1] = False
        h, w = claim.distance2.shape
        best = np.where(held, self.best[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w], -np.inf)
        for later in np.flatnonzero(near):
            other = self.claim_of(self.chips[later])
            if other is None:
                continue
            oh, ow = other.distance2.shape
            r0, r1 = max(claim.row0, other.row0), min(claim.row0 + h, other.row0 + oh)
            c0, c1 = max(claim.col0, other.col0), min(claim.col0 + w, other.col0 + ow)
            if r0 >= r1 or c0 >= c1:
                continue
            mine = best[r0 - claim.row0 : r1 - claim.row0, c0 - claim.col0 : c1 - claim.col0]
            theirs = other.distance2[r0 - other.row0 : r1 - other.row0, c0 - other.col0 : c1 - other.col0]
            if (theirs < mine).any():
                return False
        return True

    def chip_overlap(self, chip: Chip) -> float:
        """The fraction of the chip's cells held by another kept chip's patches (0…1)."""
        claim = self.claim_of(chip)
        if claim is None:
            return 0.0
        return float(1.0 - self._held(chip, claim).mean())

    def patch_overlap(self, chip: Chip, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``[n]`` bool for the chip's patches (``i``, ``j``): True where the patch holds no cell."""
        claim = self.claim_of(chip)
        i, j = np.asarray(i), np.asarray(j)
        if claim is None:
            return np.ones(len(i), bool)
        h, w = claim.distance2.shape
        owner = self.owner[claim.row0 : claim.row0 + h, claim.col0 : claim.col0 + w]
        key = self.index[(chip.row, chip.col)]
        held = np.unique(owner[owner // self.side**2 == key] % self.side**2)
        return ~np.isin(i * self.side + j, held)

    @property
    def written(self) -> np.ndarray:
        """``[H, W]`` bool: the cells some kept patch holds (the raster's cells that are not nodata)."""
        return self.owner >= 0
