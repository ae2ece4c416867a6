"""``clay-train``'s package. Importing it imports nothing heavy: :func:`main` (the console script)
first checks that the training extra is installed and says which to install if not.

``clay-train --help`` is answered here, without importing Lightning (seconds): it lists what
Lightning's CLI offers at the top level (tested against it) and points at ``clay-train fit --help``
for every option of the model, the data and the trainer.
"""

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def top_level_help() -> str:
    from .data_options import help_lines  # torch-free

    configs = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    return f"""usage: clay-train [-h] [-c CONFIG] [--print_config[=flags]] {{fit,validate,test,predict}} ...

Pretrain or fine-tune the Clay v0 masked autoencoder: Lightning's CLI over ClayPretraining (the model
and the release's recipe) and ChipDataModule (scenes as clay-run reads them, or chip GeoTIFFs).

options:
  -h, --help            Show this help message and exit.
  -c CONFIG, --config CONFIG
                        Path to a configuration file in json or yaml format.
  --print_config[=flags]
                        Print the configuration after applying all other arguments and exit
                        (flags: skip_default, skip_unset).

subcommands:
  fit                   Runs the full optimization routine.
  validate              Perform one evaluation epoch over the validation set.
  test                  Perform one evaluation epoch over the test set.
  predict               Run inference on your data.

The data (clay-train fit --data.NAME VALUE; --data.scenes and --data.val_scenes take several paths):
{help_lines()}

Weights: --init-from CKPT (= --model.init_from) starts a new run from a checkpoint's weights (the
published Clay v0 file, this project's checkpoints), its optimizer and step fresh; --ckpt_path
resumes a run where it stopped. Checkpoints record the band groups trained on (--data.groups), and
clay-export --checkpoint exports those groups by default.

Every option of a subcommand (--model.*, --data.*, --trainer.*, --ckpt_path): clay-train fit --help
(it loads Lightning: a few seconds). Configs shipped in {CONFIG_DIR}: {configs}.
Examples: clay-train fit --config {CONFIG_DIR / "tiny-cpu.yaml"} --data.data_dir CHIPS/
          clay-train fit --config {CONFIG_DIR / "tiny-cpu.yaml"} --data.scenes SCENE_FOLDER ITEM.json --init-from CKPT
"""


def main() -> None:
    from clay.runtime.console import require_extra

    require_extra("clay-train", "training")
    if sys.argv[1:] in (["-h"], ["--help"]):
        sys.stdout.write(top_level_help())
        return
    from .cli import main as run

    run()
