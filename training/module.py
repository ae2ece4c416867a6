"""The LightningModule that pretrains the Clay MAE with the release's recipe.

Its only attribute with weights is ``model`` (a :class:`ClayMAE`), so the ``state_dict`` of its
checkpoints has exactly the published layout (``model.encoder...``) and loads with
:func:`clay.training.checkpoint.load_clay_mae` like the published file.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from clay.runtime.bands import GROUP_NAMES, parse_groups
from torch import Tensor

from .checkpoint import CheckpointError, init_from_state, read_clay_state
from .model import ClayMAE
from .sizes import get_size

log = logging.getLogger("clay.training")


class ClayPretraining(L.LightningModule):
    """Masked-autoencoder pretraining.

    Defaults are the Clay v0 release recipe: AdamW (lr 1e-4, weight decay 0.05, betas 0.9/0.95),
    cosine annealing with warm restarts stepped per optimiser step (T_0 1000, T_mult 2) and
    ``eta_min = 10 × lr`` — larger than lr, as published (the schedule oscillates between lr and
    10 × lr); set ``eta_min_factor`` below 1 for a conventional decay.

    Args:
        size: Model size (tiny, small, base, large); default: the size of ``init_from``'s weights,
            else small.
        mask_ratio: Fraction of each chip's patches masked (the release: 0.75).
        groups: Band groups trained on (set from --data.groups); recorded in every checkpoint, and
            clay-export --checkpoint exports these groups by default.
        init_from: Start from these weights (the published Clay v0 checkpoint, this project's
            checkpoints, a bare state dict): a new run, its optimizer and step fresh. Unlike
            --ckpt_path, which resumes a run where it stopped. Every band group starts from the
            checkpoint's weights for it, the groups trained here included.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        t_0: Steps of the first cosine cycle (CosineAnnealingWarmRestarts' T_0).
        t_mult: Growth of each later cycle (T_mult).
        eta_min_factor: CosineAnnealingWarmRestarts' eta_min as a multiple of lr (the release: 10,
            which makes it a ceiling the schedule rises to, not a floor; below 1 it is the floor).
    """

    def __init__(
        self,
        size: str | None = None,
        mask_ratio: float = 0.75,
        groups: list[str] | None = None,
        init_from: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        t_0: int = 1000,
        t_mult: int = 2,
        eta_min_factor: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.groups = parse_groups(groups) if groups else GROUP_NAMES
        if init_from is None:
            self.model = ClayMAE(size or "small", mask_ratio=mask_ratio)
        else:
            # Read when the model is built: a run resumed with --ckpt_path then overwrites these
            # weights with its checkpoint's, as it does a random initialisation.
            state, inferred = read_clay_state(init_from)
            if size is not None and get_size(size).name != inferred.name:
                raise CheckpointError(f"{init_from}: the weights are Clay '{inferred.name}', not --model.size {size} "
                                      f"(a config may set it): give --model.size {inferred.name}, or null to take the "
                                      "checkpoint's")  # fmt: skip
            self.model = ClayMAE(inferred.name, mask_ratio=mask_ratio)
            init_from_state(self.model, state, init_from)
            log.warning("weights from %s (Clay '%s'): a new run, optimizer and step fresh", init_from, inferred.name)
        self.hparams["size"] = self.model.size.name  # what was built, where size was left to the weights

    def _step(self, batch: dict | None, stage: str) -> Tensor | None:
        """One batch, or one batch of each kind of file (a dict of them; see ChipDataModule): the
        loss is the mean over kinds, so a kind of few files is not drowned by the others."""
        if batch is not None and "pixels" not in batch:
            losses = [self._loss(b) for b in batch.values() if b is not None]
            loss = torch.stack(losses).mean() if losses else None
            chips = sum(b["pixels"].shape[0] for b in batch.values() if b is not None)
        else:
            loss = self._loss(batch) if batch is not None else None  # None: every chip was rejected
            chips = batch["pixels"].shape[0] if batch is not None else 0
        if loss is not None:
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=chips, sync_dist=stage == "val")
        return loss

    def _loss(self, batch: dict) -> Tensor:
        groups = batch.get("groups", self.groups)
        loss, _, _ = self.model(batch["pixels"], batch["lonlat"], batch["date"], groups, valid=batch.get("valid"))
        return loss

    def training_step(self, batch: dict[str, Tensor] | None, batch_idx: int) -> Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor] | None, batch_idx: int) -> Tensor | None:
        return self._step(batch, "val")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas)
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=hp.t_0, T_mult=hp.t_mult, eta_min=hp.lr * hp.eta_min_factor
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
