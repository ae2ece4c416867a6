"""``clay-train``: Lightning's CLI over :class:`ClayPretraining` and :class:`ChipDataModule`.

LightningCLI gives config files, ``fit``/``validate`` subcommands, resume (``--ckpt_path``), seeds,
and Lightning's own DDP and multi-node launch (``--trainer.devices``, ``--trainer.num_nodes``), so
the same command trains ``tiny`` on a laptop and ``small`` on a GPU cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .checkpoint import CheckpointError
from .data import ChipDataModule, ChipError
from .module import ClayPretraining

CONFIG_DIR = Path(__file__).parent / "configs"


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU features that make bf16 autocast faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precision() -> str:
    """The release trained in bf16-mixed; use it wherever the hardware has bf16, else fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


class ClayCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.groups", "model.groups")


def checkpoint_callbacks() -> list:
    """Top-3 by validation loss plus ``last.ckpt`` (what ``--ckpt_path last`` resumes from)."""
    return [
        ModelCheckpoint(
            monitor="val/loss", mode="min", save_top_k=3, save_last=True,
            filename="clay-{epoch:02d}-{step}-{val/loss:.4f}", auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]  # fmt: skip


def main(args: list[str] | None = None) -> None:
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
