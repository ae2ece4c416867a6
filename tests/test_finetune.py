"""``clay-train`` on the scenes ``clay-run`` reads, starting from existing weights (issue 34)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch", reason="training tests need the [training] extra")
pytest.importorskip("lightning", reason="training tests need the [training] extra")

from clay.runtime.bands import BAND_MEANS, BAND_NAMES, BAND_STDS, bands_of_groups  # noqa: E402
from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE  # noqa: E402
from clay.runtime.engines.choice import read_engine_metadata  # noqa: E402
from clay.runtime.scenes.grid import Chip  # noqa: E402
from clay.runtime.scenes.reader import read_chip  # noqa: E402
from clay.runtime.scenes.scene import open_scene  # noqa: E402
from clay.training.checkpoint import CheckpointError, load_clay_mae  # noqa: E402
from clay.training.data import (  # noqa: E402
    ChipDataModule,
    ChipDataset,
    ChipError,
    collate_chips,
    find_scenes,
    inspect_chip,
)
from clay.training.data_options import DATA_OPTIONS  # noqa: E402
from clay.training.module import ClayPretraining  # noqa: E402

from .conftest import SSL4EO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "training" / "configs" / "tiny-cpu.yaml"
S2_GROUPS = ("rgb", "rededge", "nir", "swir")
#: Lightning's lines that are not about the run (issue 34): gone, or said once in clay-train's words.
NOISE = ("tensorboardX", "litlogger", "litmodels", "💡", "log_every_n_steps", "could not find the monitored key",
         "Total length of `DataLoader`", "LightningCLI's args parameter")  # fmt: skip


def clay_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``clay-train`` as a user runs it (the console script's entry point, in a fresh interpreter)."""
    code = "import sys\nfrom clay.training import main\nsys.argv[0] = 'clay-train'\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def logged_losses(root: Path) -> list[float]:
    (metrics,) = root.rglob("metrics.csv")
    with metrics.open() as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_every_data_option_is_documented_in_both_helps():
    import inspect

    from clay.training import top_level_help

    parameters = [p for p in inspect.signature(ChipDataModule.__init__).parameters if p != "self"]
    assert parameters == list(DATA_OPTIONS), "DATA_OPTIONS follows ChipDataModule's signature"
    text = top_level_help()
    for name in parameters:
        assert f"--data.{name}" in text
    assert "--init-from" in text


def test_clay_train_on_scenes_from_weights_trains_a_new_run_quietly(checkpoint, tmp_path):
    """The bundled real S2 scene (per-band files at 10 and 20 m) and the SSL4EO S2 + S1 pair (two
    product folders under one, S1 in dB, 264 px: padded), found as clay-run finds them, from the
    weights of a checkpoint in the published layout: a new run (step count from 0) whose losses are
    finite, validated on a scene, with none of Lightning's lines that are not about the run."""
    result = clay_train(
        "fit", "--config", str(TINY_CONFIG), "--data.scenes", str(DEMO_SCENE), str(SSL4EO),
        "--data.groups", "rgb,rededge,nir,swir,sar", "--data.partial_groups", "true", "--data.pad_small", "true",
        "--data.sar_units", "db",
        "--data.batch_size", "1", "--data.val_scenes", str(DEMO_SCENE), "--init-from", str(checkpoint),
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not [n for n in NOISE if n in output], output[-3000:]
    assert "skipping" not in output  # both scenes trained
    assert "metrics: " in output and "no validation chips" not in output
    losses = logged_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    stored = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert stored["global_step"] == 2  # a new run: not the checkpoint's step
    hyper = stored["hyper_parameters"]
    assert hyper["init_from"] == str(checkpoint) and hyper["size"] == "tiny"  # size taken from the weights
    assert list(hyper["groups"]) == ["rgb", "rededge", "nir", "swir", "sar"]


def test_scene_chips_train_with_a_loss_that_falls_on_a_fixed_batch(torch_threads):
    data = ChipDataModule(scenes=[str(DEMO_SCENE), str(SSL4EO)], groups="rgb,rededge,nir,swir,sar", partial_groups=True,
                          pad_small=True, val_scenes=[str(DEMO_SCENE)], batch_size=2, augment=False, sar_units="db")  # fmt: skip
    data.setup("fit")
    assert sorted(data.train_sets) == ["rgb,rededge,nir,swir", "rgb,rededge,nir,swir,sar (padded)"]
    from clay.training.model import ClayMAE

    for key, dataset in data.train_sets.items():
        batch = collate_chips([dataset[0]])
        torch.manual_seed(0)
        model = ClayMAE("tiny")
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(6):  # the same batch and the same mask every step
            loss, _, _ = model(batch["pixels"], batch["lonlat"], batch["date"], batch["groups"],
                               generator=torch.Generator().manual_seed(1), valid=batch["valid"])  # fmt: skip
            assert torch.isfinite(loss)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] * 0.9, (key, losses)


def test_scene_chips_equal_clay_runs_reads_of_the_same_windows():
    """What training feeds (normalised) is what clay-run reads with the demo engine (same 10 S2 bands,
    20 m bands resampled as clay-run resamples them), window for window."""
    engine = read_engine_metadata(DEMO_ENGINE)
    assert tuple(engine.groups) == S2_GROUPS
    (scene_files,) = find_scenes([DEMO_SCENE])  # the folder of per-band files, as clay-run finds it
    chip = inspect_chip(scene_files, S2_GROUPS)
    dataset = ChipDataset([chip], S2_GROUPS, augment=False, samples_per_file=1)
    item = dataset[0]
    row, col = item["origin"].tolist()
    scene = open_scene(DEMO_SCENE, engine)
    expected, fraction = read_chip(scene, Chip(row, col, 512, 512))
    assert fraction == 0
    bands = bands_of_groups(S2_GROUPS)
    mean = np.array([BAND_MEANS[b] for b in bands], np.float32)[:, None, None]
    std = np.array([BAND_STDS[b] for b in bands], np.float32)[:, None, None]
    fed = item["pixels"].numpy() * std + mean
    assert [BAND_NAMES[b] for b in bands] == list(engine.bands)
    np.testing.assert_allclose(fed, expected, rtol=1e-5, atol=1e-2)
    assert tuple(item["lonlat"].numpy()) == pytest.approx(scene.chip_centre(Chip(row, col, 512, 512)), abs=1e-5)


def test_random_windows_stay_inside_a_scenes_valid_area(tmp_path):
    """A scene whose left half is nodata (an orbit edge): every window fed holds valid pixels only."""
    from clay.training.synthetic import write_scene

    path = write_scene(tmp_path / "S2B_MSIL2A_20210506T101559_N0300_R065_T32TNS_20210506T131013.tif", 1400, 900, seed=3,
                       dtype="uint16", bands=tuple(BAND_NAMES[b] for b in bands_of_groups(S2_GROUPS)))  # fmt: skip
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, :700] = 0  # Sentinel-2's nodata value
        dst.write(data)
    chip = inspect_chip(path, S2_GROUPS)
    dataset = ChipDataset([chip], S2_GROUPS, augment=True, samples_per_file=12, window_tries=40)
    torch.manual_seed(0)
    cols = []
    for i in range(len(dataset)):
        item = dataset[i]
        assert item is not None
        cols.append(int(item["origin"][1]))
    assert min(cols) >= 700 and len(set(cols)) > 1  # inside the valid half, at random positions


def test_init_from_gives_the_checkpoints_first_step_loss(checkpoint):
    """Starting from a checkpoint's weights: the first step's loss is that of evaluating the checkpoint
    on the same batch and mask; a random start's is not."""
    from clay.training.synthetic import make_chips

    pixels, lonlat, date = (torch.from_numpy(a) for a in make_chips(2, seed=5))
    mean = torch.tensor(BAND_MEANS)[:, None, None]
    std = torch.tensor(BAND_STDS)[:, None, None]
    batch = {"pixels": (pixels - mean) / std, "lonlat": lonlat, "date": date}
    module = ClayPretraining(init_from=str(checkpoint))
    assert module.model.size.name == "tiny" and module.hparams["size"] == "tiny"
    reference = load_clay_mae(checkpoint)
    module.model.train()
    reference.train()
    torch.manual_seed(11)
    first = module.training_step(batch, 0)
    torch.manual_seed(11)
    evaluated, _, _ = reference(batch["pixels"], batch["lonlat"], batch["date"])
    assert float(first) == pytest.approx(float(evaluated), rel=1e-6)
    torch.manual_seed(11)
    fresh = ClayPretraining(size="tiny").training_step(batch, 0)
    assert abs(float(fresh) - float(first)) > 1e-3

    with pytest.raises(CheckpointError, match=rf"^{checkpoint}: the weights are Clay 'tiny', not --model.size small .*"
                                              r"give --model.size tiny, or null"):  # fmt: skip
        ClayPretraining(size="small", init_from=str(checkpoint))


def test_init_from_a_missing_file_and_a_scene_folder_without_bands_are_one_line(tmp_path):
    missing = clay_train("fit", "--config", str(TINY_CONFIG), "--data.scenes", str(DEMO_SCENE),
                         "--init-from", str(tmp_path / "nope.ckpt"), cwd=tmp_path)  # fmt: skip
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == f"clay-train: {tmp_path / 'nope.ckpt'}: no such checkpoint file"
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = clay_train("fit", "--config", str(TINY_CONFIG), "--data.scenes", str(empty), cwd=tmp_path)
    assert nothing.returncode != 0 and "Traceback" not in nothing.stderr
    assert nothing.stderr.strip().splitlines()[-1] == f"clay-train: {empty}: no GeoTIFF files in this folder"
    with pytest.raises(ChipError, match="either --data.scenes .* or --data.data_dir"):
        ChipDataModule()


def test_an_s2_checkpoint_exports_an_s2_engine_by_default_that_clay_run_runs(tmp_path):
    """Trained on the S2 groups of a folder of per-band files: clay-export --checkpoint, without
    --groups, exports those groups and says so, and clay-run embeds the same folder with it."""
    trained = clay_train("fit", "--config", str(TINY_CONFIG), "--data.scenes", str(DEMO_SCENE), "--data.groups",
                         ",".join(S2_GROUPS), "--data.batch_size", "1", "--data.val_fraction", "0", "--trainer.max_steps",
                         "1", "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
                         cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    last = next((tmp_path / "run").rglob("last.ckpt"))
    engine = tmp_path / "engine"
    exported = subprocess.run([sys.executable, "-m", "clay.export.cli", "--checkpoint", str(last), "--out", str(engine)],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    said = exported.stdout + exported.stderr
    assert "groups: rgb,rededge,nir,swir, the groups the checkpoint was trained on" in said
    assert "never trained on" not in said and "trained on groups:" not in said  # said once, not twice
    metadata = read_engine_metadata(next(engine.glob("*.onnx")))
    assert tuple(metadata.groups) == S2_GROUPS
    out = tmp_path / "out"
    embedded = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(DEMO_SCENE), "--engine", str(engine), "--out",
                               str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert (out / f"{DEMO_SCENE.name}.parquet").is_file()
