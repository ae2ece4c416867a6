"""``clay-train``: Lightning's CLI over :class:`ClayPretraining` and :class:`ChipDataModule`.

LightningCLI gives config files, ``fit``/``validate`` subcommands, resume (``--ckpt_path``), seeds,
and Lightning's own DDP and multi-node launch (``--trainer.devices``, ``--trainer.num_nodes``), so
the same command trains ``tiny`` on a laptop and ``small`` on a GPU cluster.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

from clay.runtime.bands import parse_groups
from clay.runtime.console import quiet_known_warnings
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .checkpoint import CheckpointError
from .data import ChipDataModule, ChipError
from .module import ClayPretraining
from .precision import default_precision


class ClayCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # normalised on the way: --data.groups takes "rgb,swir" as well as a list
        parser.link_arguments("data.groups", "model.groups", compute_fn=lambda groups: list(parse_groups(groups)))


class RunNotes(Callback):
    """What Lightning would say in its own terms, said once in ours: where the metrics go, and a
    logging interval longer than a short run's epoch shortened to it (else its loss is never logged)."""

    def on_train_start(self, trainer, pl_module) -> None:
        batches = trainer.num_training_batches
        if isinstance(batches, int) and 0 < batches < trainer.log_every_n_steps:
            trainer.log_every_n_steps = batches
        if trainer.is_global_zero and isinstance(trainer.logger, CSVLogger):
            log.warning("metrics: %s/metrics.csv (CSV; pip install tensorboard for TensorBoard logs)", trainer.logger.log_dir)


def checkpoint_callbacks() -> list:
    """Top-3 by validation loss plus ``last.ckpt`` (what ``--ckpt_path last`` resumes from)."""
    return [
        ModelCheckpoint(
            monitor="val/loss", mode="min", save_top_k=3, save_last=True,
            filename="clay-{epoch:02d}-{step}-{val/loss:.4f}", auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        RunNotes(),
    ]  # fmt: skip


log = logging.getLogger("clay.training")

#: Lightning's advisories about its own internals, which a clay-train user can do nothing about,
#: and its notes that clay-train says once in its own words instead.
LIGHTNING_ADVISORIES = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch 2.13's pytree
    r"Precision bf16-mixed is not supported by the model summary",  # only its size estimate
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # RunNotes names the CSV file instead
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # RunNotes shortens it
    # No validation set: the data module says so once ("no validation chips ..."), in clay-train's terms.
    r"Total length of `DataLoader` across ranks is zero",
    r"`ModelCheckpoint\(monitor='val/loss'\)` could not find the monitored key",
)


class _NoTips(logging.Filter):
    """Lightning's advertisements for its cloud services (litlogger, litmodels), and its reports of
    accelerators the machine lacks ("TPU available: False, using: 0 TPU cores"): not about the run.
    The GPU line stays: whether a GPU was used is."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("💡 Tip") or message.startswith(("TPU available: False", "HPU available: False")))


#: Options taking several paths, as clay-run takes scenes: ``--data.scenes A B C``. jsonargparse
#: takes a list option once as a YAML/JSON list (``--data.scenes '[A, B]'``) or item by item
#: (``--data.scenes+ A``); the paths that follow such a flag become that list.
PATH_LISTS = ("--data.scenes", "--data.val_scenes")
#: Short spellings of model options: ``--init-from CKPT`` is ``--model.init_from CKPT``.
ALIASES = {"--init-from": "--model.init_from"}


def normalise_args(args: list[str]) -> list[str]:
    """``clay-train``'s own spellings in LightningCLI's terms (see :data:`PATH_LISTS`, :data:`ALIASES`)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        flag = ALIASES.get(flag, flag)
        if flag in PATH_LISTS:
            values = [value] if eq else []
            i += 1
            while not eq and i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            if len(values) == 1 and values[0].lstrip().startswith("["):
                out += [flag, values[0]]  # already a list
            else:
                out += [flag, json.dumps(values)]
            continue
        out.append(f"{flag}{eq}{value}" if eq else flag)
        i += 1
    return out


def main(args: list[str] | None = None) -> None:
    quiet_known_warnings()
    for message in LIGHTNING_ADVISORIES:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    if args is None:  # the console script: LightningCLI reads sys.argv (it warns when given both)
        sys.argv[1:] = normalise_args(sys.argv[1:])
    else:
        args = normalise_args(list(args))
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
