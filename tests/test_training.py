"""Pretraining data and the ``clay-train`` command on generated chip GeoTIFFs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio.transform

torch = pytest.importorskip("torch", reason="training tests need the [training] extra")
pytest.importorskip("lightning", reason="training tests need the [training] extra")

from clay.runtime.bands import BAND_MEANS, BAND_NAMES, BAND_STDS, GROUP_NAMES  # noqa: E402
from clay.runtime.options import RunOptions  # noqa: E402
from clay.training.checkpoint import load_clay_mae  # noqa: E402
from clay.training.data import (  # noqa: E402
    ChipDataModule,
    ChipDataset,
    ChipError,
    collate_chips,
    inspect_chip,
    usable_chips,
)
from clay.training.synthetic import write_chip, write_scene  # noqa: E402


@pytest.fixture(scope="module")
def chip_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("chips")
    for i in range(32):
        write_chip(directory / f"claytile_48QUE_20200223_v02_{i:04d}.tif", seed=i)
    return directory


def test_chip_reads_normalised_with_its_place_and_date(chip_dir):
    chip = inspect_chip(next(chip_dir.glob("*.tif")), GROUP_NAMES)
    item = ChipDataset([chip])[0]
    assert item["pixels"].shape == (13, 512, 512)
    assert abs(item["pixels"].mean().item()) < 3  # normalised, not raw DNs
    lon, lat = item["lonlat"].tolist()
    assert 103.0 < lon < 104.5 and 17.0 < lat < 18.5  # the generator's default UTM 48N origin
    assert item["date"].tolist() == [2020, 2, 23]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"band_count": 12, "band_descriptions": False}, "12 bands without band descriptions, expected 13"),
        ({"with_crs": False}, "no CRS"),
        ({"with_date_tag": False}, "no acquisition date"),
    ],
)
def test_bad_chip_headers_are_refused_with_a_reason(tmp_path, kwargs, reason):
    path = write_chip(tmp_path / "bad.tif", **kwargs)
    with pytest.raises(ChipError, match=reason):
        inspect_chip(path, GROUP_NAMES)


def test_nan_chip_is_skipped_with_a_logged_reason_not_a_crash(tmp_path, caplog):
    good = write_chip(tmp_path / "good.tif", seed=1)
    bad = write_chip(tmp_path / "nan.tif", seed=2, nodata_fraction=1.0)  # every pixel NaN
    dataset = ChipDataset([inspect_chip(p, GROUP_NAMES) for p in (good, bad)])
    with caplog.at_level(logging.WARNING):
        batch = collate_chips([dataset[0], dataset[1]])
    assert batch["pixels"].shape[0] == 1
    assert "nan.tif" in caplog.text and "NaN" in caplog.text
    assert collate_chips([dataset[1]]) is None


def test_setup_leaves_out_bad_files_and_keeps_the_rest(tmp_path, caplog):
    for i in range(3):
        write_chip(tmp_path / f"ok{i}.tif", seed=i)
    write_chip(tmp_path / "nodate.tif", with_date_tag=False)
    data = ChipDataModule(str(tmp_path), val_fraction=0.0, batch_size=2)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert sum(len(d) for d in data.train_sets.values()) + len(data.val_set) == 3
    assert "nodate.tif: no acquisition date" in caplog.text


def test_s2_only_groups_read_by_band_name(tmp_path):
    from clay.runtime.bands import S2_BANDS

    path = write_chip(tmp_path / "s2.tif", bands=S2_BANDS, dtype="uint16")
    groups = ("rgb", "rededge", "nir", "swir")
    item = ChipDataset([inspect_chip(path, groups)], groups)[0]
    assert item["pixels"].shape == (10, 512, 512)
    with pytest.raises(ChipError, match="lacks band") as refused:
        inspect_chip(path, GROUP_NAMES)
    # the runtime's hint names clay-export; training's names its own options
    assert "(train on them with --data.groups rgb,rededge,nir,swir, or each file on the groups it has with " \
           "--data.partial_groups true)" in str(refused.value) and "clay-export" not in str(refused.value)


def test_validation_takes_a_usable_file_and_groups_may_be_a_comma_list(tmp_path, caplog):
    """The fallback validation file was chosen before the files were checked: with a file that has no
    date among them, it could be that one, leaving validation empty (no val/loss, no best checkpoints)."""
    from clay.runtime.bands import S2_BANDS

    for i in range(4):
        write_chip(tmp_path / f"s2-{i}.tif", bands=S2_BANDS, dtype="uint16", seed=i)
    write_chip(tmp_path / "z-nodate.tif", bands=S2_BANDS, dtype="uint16", with_date_tag=False)  # last by name
    data = ChipDataModule(str(tmp_path), val_fraction=0.0, groups="rgb,rededge,nir,swir", batch_size=2)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert [f.path.name for f in data.val_set.files] == ["s2-3.tif"]
    assert sum(len(d.files) for d in data.train_sets.values()) == 3
    assert "no validation chips" not in caplog.text and "z-nodate.tif: no acquisition date" in caplog.text


def test_files_that_all_fall_into_validation_still_train(tmp_path, caplog):
    """The split by name could put every usable file into validation (one scene whose name hashes
    there; any scene at --data.val_fraction 1.0): clay-train then said "no usable scenes"."""
    from clay.runtime.bands import S2_BANDS

    write_chip(tmp_path / "only.tif", bands=S2_BANDS, dtype="uint16")
    data = ChipDataModule(str(tmp_path), val_fraction=1.0, groups="rgb,rededge,nir,swir", batch_size=1)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert sum(len(d.files) for d in data.train_sets.values()) == 1 and "no validation chips" in caplog.text
    write_chip(tmp_path / "second.tif", bands=S2_BANDS, dtype="uint16", seed=1)
    data = ChipDataModule(str(tmp_path), val_fraction=1.0, groups="rgb,rededge,nir,swir", batch_size=1)
    data.setup("fit")
    assert sum(len(d.files) for d in data.train_sets.values()) == 1 and len(data.val_set.files) == 1


def test_small_image_is_padded_like_the_runtime_and_its_padding_left_out_of_the_loss(tmp_path):
    from clay.runtime.bands import S2_BANDS

    path = write_scene(tmp_path / "small.tif", 264, 264, bands=(*S2_BANDS, "VH", "VV"))
    groups = ("rgb", "rededge", "nir", "swir", "sar")
    with pytest.raises(ChipError, match="smaller than a 512"):
        inspect_chip(path, groups)
    chip = inspect_chip(path, GROUP_NAMES, partial_groups=True, pad_small=True)
    assert chip.groups == groups  # no DEM in the file: trains on the groups it has
    item = ChipDataset([chip], chip.groups, augment=True)[0]
    assert item["pixels"].shape == (12, 512, 512)
    valid = item["valid"].reshape(16, 16)
    assert valid[:8, :8].all() and valid.sum() == 64  # 264 px = 8 whole 32 px patches per side
    assert torch.equal(item["pixels"][:, 300:, 300:], item["pixels"][:, 263:264, 263:264].expand(12, 212, 212))

    from clay.training.model import ClayMAE, masked_patch_loss

    model = ClayMAE("tiny").eval()
    batch = collate_chips([item, item])
    args = (batch["pixels"], batch["lonlat"], batch["date"], batch["groups"])
    loss, pixels, mask = model(*args, generator=torch.Generator().manual_seed(0), valid=batch["valid"])
    scored = mask * batch["valid"].repeat(1, len(groups))
    assert torch.isclose(loss, masked_patch_loss(batch["pixels"], pixels, scored, groups))
    assert not torch.isclose(loss, masked_patch_loss(batch["pixels"], pixels, mask, groups))


def test_files_of_two_kinds_train_in_one_step_without_mixing_batches(tmp_path):
    from clay.runtime.bands import S2_BANDS
    from clay.training.module import ClayPretraining
    from lightning.pytorch.utilities import CombinedLoader

    for folder in ("train", "val"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        write_chip(tmp_path / "train" / f"s2-{i}.tif", bands=S2_BANDS, dtype="uint16", seed=i)
    write_scene(tmp_path / "train" / "s2-s1.tif", 264, 264, bands=(*S2_BANDS, "VH", "VV"), seed=5)
    write_chip(tmp_path / "val" / "s2.tif", bands=S2_BANDS, dtype="uint16", seed=9)
    data = ChipDataModule(str(tmp_path / "train"), val_dir=str(tmp_path / "val"), batch_size=2, batch_size_small=1,
                          groups=list(GROUP_NAMES), partial_groups=True, pad_small=True, augment=True)  # fmt: skip
    data.setup("fit")
    assert set(data.train_sets) == {"rgb,rededge,nir,swir", "rgb,rededge,nir,swir,sar (padded)"}
    loader = data.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    batch, _, _ = next(iter(loader))
    assert batch["rgb,rededge,nir,swir"]["pixels"].shape == (2, 10, 512, 512)
    assert batch["rgb,rededge,nir,swir,sar (padded)"]["pixels"].shape == (1, 12, 512, 512)
    loss = ClayPretraining(size="tiny", groups=list(GROUP_NAMES))._step(batch, "train")
    assert torch.isfinite(loss) and loss.requires_grad


def run_clay_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clay.training.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_clay_train_two_epochs_writes_a_checkpoint_that_loads_and_resumes(chip_dir, tmp_path):
    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny-cpu.yaml"
    common = ["--config", str(config), "--data.data_dir", str(chip_dir), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    result = run_clay_train("fit", *common, "--trainer.max_epochs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    last = next(p for p in checkpoints if p.name == "last.ckpt")
    assert len(checkpoints) >= 3  # top-k by val/loss + last
    model = load_clay_mae(last)
    assert model.size.name == "tiny"
    assert torch.load(last, weights_only=False)["epoch"] == 1

    resumed = run_clay_train("fit", *common, "--trainer.max_epochs", "3", "--ckpt_path", str(last), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    newest = max(tmp_path.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(newest, weights_only=False)["epoch"] == 2


def test_clay_train_with_no_usable_chips_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_clay_train("fit", "--model.size", "tiny", "--data.data_dir", str(empty), "--data.groups", "rgb,swir",
                            "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "clay-train:" in result.stderr and "no usable chip files" in result.stderr
    assert "Traceback" not in result.stderr


def test_release_recipe_optimiser_and_schedule():
    from clay.training.module import ClayPretraining

    module = ClayPretraining(size="tiny")
    config = module.configure_optimizers()
    optimiser, scheduler = config["optimizer"], config["lr_scheduler"]
    group = optimiser.param_groups[0]
    assert np.isclose(group["initial_lr"], 1e-4)
    assert (group["weight_decay"], group["betas"]) == (0.05, (0.9, 0.95))
    assert scheduler["interval"] == "step"
    assert (scheduler["scheduler"].T_0, scheduler["scheduler"].T_mult) == (1000, 2)
    assert np.isclose(scheduler["scheduler"].eta_min, 1e-3)


def test_a_chip_trains_on_the_values_it_is_embedded_with(tmp_path, caplog):
    """The chip reader used to read stored values raw: an S2 file carrying +1000 (GDAL offset −0.1 at
    scale 1e-4) trained 1000 DN too bright, a DEM stored as int16 decimetres (scale 0.1) trained at 10×
    its elevation, masked pixels trained as their filler and SAR in dB as linear power. Now the
    runtime's reader brings each file to Clay units: the encoded file trains on the plain file's values."""
    from clay.runtime.bands import S2_BANDS
    from clay.training.synthetic import make_scene_array

    from .inputs import write_stack

    groups = ("rgb", "rededge", "nir", "swir", "dem")
    cube = make_scene_array(512, 512, seed=3)
    dn, metres = np.rint(cube[:10]), np.rint(cube[12:] * 10) / 10
    transform = rasterio.transform.Affine(10, 0, 362600, 0, -10, 1987080)
    names, tags = [*S2_BANDS, "DEM"], {"date": "2023-06-01"}
    write_stack(tmp_path / "plain.tif", np.concatenate([dn, metres]), transform, "EPSG:32648", names, tags=tags)
    encoded = np.concatenate([dn + 1000, np.rint(metres * 10)]).astype(np.int16)
    write_stack(tmp_path / "encoded.tif", encoded, transform, "EPSG:32648", names, tags=tags,
                scales=[1e-4] * 10 + [0.1], offsets=[-0.1] * 10 + [0.0])  # fmt: skip
    bands = [list(BAND_NAMES).index(n) for n in names]
    expected = (np.concatenate([dn, metres]) - np.array([BAND_MEANS[b] for b in bands])[:, None, None]) / np.array(
        [BAND_STDS[b] for b in bands]
    )[:, None, None]
    for name in ("plain", "encoded"):
        item = ChipDataset([inspect_chip(tmp_path / f"{name}.tif", groups)], groups)[0]
        np.testing.assert_allclose(item["pixels"].numpy(), expected, atol=1e-4, err_msg=name)

    valid = np.ones((512, 512), bool)
    valid[:40, :40] = False  # an internal mask; 7 underneath, which would train as a value
    write_stack(tmp_path / "masked.tif", np.where(valid, encoded, 7), transform, "EPSG:32648", names, dtype="int16",
                tags=tags, scales=[1e-4] * 10 + [0.1], offsets=[-0.1] * 10 + [0.0], dataset_mask=valid)  # fmt: skip
    sar = 10 * np.log10(cube[10:12])  # dB with no unit metadata: the runtime refuses it under auto
    write_stack(tmp_path / "db.tif", np.concatenate([cube[:10], sar, cube[12:]]), transform, "EPSG:32648",
                [*S2_BANDS, "VH", "VV", "DEM"], tags=tags)  # fmt: skip
    write_stack(tmp_path / "linear.tif", cube, transform, "EPSG:32648", [*S2_BANDS, "VH", "VV", "DEM"], tags=tags)
    with caplog.at_level(logging.WARNING):
        assert ChipDataset([inspect_chip(tmp_path / "masked.tif", groups)], groups)[0] is None
        refused = ChipDataset([inspect_chip(tmp_path / "db.tif", GROUP_NAMES)])
        assert refused[0] is None and refused[0] is None  # the second window is skipped without a word
    assert "masked.tif window (0, 0): 1600 of its 262144 pixels are nodata, NaN or masked" in caplog.text
    said = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage() and "db.tif" in r.getMessage()]
    assert len(said) == 1 and "in dB" in said[0] and "pass --data.sar_units db" in said[0] and "RunOptions" not in said[0]
    as_db = ChipDataset([inspect_chip(tmp_path / "db.tif", GROUP_NAMES, options=RunOptions(sar_units="db"))])[0]
    as_linear = ChipDataset([inspect_chip(tmp_path / "linear.tif", GROUP_NAMES)])[0]
    np.testing.assert_allclose(as_db["pixels"].numpy(), as_linear["pixels"].numpy(), atol=1e-4)


def test_setup_says_a_warning_the_files_share_once(tmp_path, caplog):
    """Sensed in 2023 with no offset declared: the runtime warns per scene; setup over an archive says
    it once, with the number of files, in clay-train's terms."""
    from clay.runtime.bands import S2_BANDS

    for i in range(3):
        write_chip(tmp_path / f"s2-{i}.tif", bands=S2_BANDS, dtype="uint16", seed=i, date="2023-06-01")
    with caplog.at_level(logging.WARNING):
        files = usable_chips(sorted(tmp_path.glob("*.tif")), ("rgb", "rededge", "nir", "swir"), 512)
    said = [r.getMessage() for r in caplog.records if "+1000 offset" in r.getMessage()]
    assert len(files) == 3 and len(said) == 1
    assert said[0].startswith("3 file(s), e.g. ") and "pass --data.s2_offset 1000" in said[0]


def _read_in_child(dataset: ChipDataset) -> tuple[bool, np.ndarray]:
    from clay.runtime.scenes import reader

    return getattr(reader._local, "handles", None) is not None, dataset[0]["pixels"].numpy()


def test_a_forked_worker_does_not_read_through_its_parents_open_files(chip_dir):
    """The runtime's reader keeps files open per thread; a DataLoader worker forked after the main
    process read a chip would otherwise share its GDAL handles (and their file offsets)."""
    import multiprocessing

    dataset = ChipDataset([inspect_chip(next(chip_dir.glob("*.tif")), GROUP_NAMES)])
    first = dataset[0]["pixels"].numpy()  # the main process now holds the file open
    with multiprocessing.get_context("fork").Pool(1) as pool:
        inherited, pixels = pool.apply(_read_in_child, (dataset,))
    assert not inherited
    assert np.array_equal(pixels, first)
