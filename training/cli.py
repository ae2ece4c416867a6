"""``clay-train``: Lightning's CLI over :class:`ClayPretraining` and :class:`ChipDataModule`.

LightningCLI gives config files, ``fit``/``validate`` subcommands, resume (``--ckpt_path``), seeds,
and Lightning's own DDP and multi-node launch (``--trainer.devices``, ``--trainer.num_nodes``), so
the same command trains ``tiny`` on a laptop and ``small`` on a GPU cluster.
"""

from __future__ import annotations

import sys
import warnings

from clay.runtime.bands import parse_groups
from clay.runtime.console import quiet_known_warnings
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .checkpoint import CheckpointError
from .data import ChipDataModule, ChipError
from .module import ClayPretraining
from .precision import default_precision


class ClayCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # normalised on the way: --data.groups takes "rgb,swir" as well as a list
        parser.link_arguments("data.groups", "model.groups", compute_fn=lambda groups: list(parse_groups(groups)))


def checkpoint_callbacks() -> list:
    """Top-3 by validation loss plus ``last.ckpt`` (what ``--ckpt_path last`` resumes from)."""
    return [
        ModelCheckpoint(
            monitor="val/loss", mode="min", save_top_k=3, save_last=True,
            filename="clay-{epoch:02d}-{step}-{val/loss:.4f}", auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]  # fmt: skip


#: Lightning's advisories about its own internals, which a clay-train user can do nothing about.
LIGHTNING_ADVISORIES = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch 2.13's pytree
    r"Precision bf16-mixed is not supported by the model summary",  # only its size estimate
)


def main(args: list[str] | None = None) -> None:
    quiet_known_warnings()
    for message in LIGHTNING_ADVISORIES:
        warnings.filterwarnings("ignore", message=message)
    try:
        ClayCLI(
            ClayPretraining,
            ChipDataModule,
            seed_everything_default=42,
            trainer_defaults={"precision": default_precision(), "callbacks": checkpoint_callbacks()},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ChipError, CheckpointError) as exc:
        sys.exit(f"clay-train: {exc}")


if __name__ == "__main__":
    main()
