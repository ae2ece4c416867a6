"""The demo weights: a `tiny` Clay model pretrained on the real Sentinel-2 scene T48QUE.

``python -m clay.training.demo --out runs/demo`` reproduces them: it stacks the per-band scene onto
its 10 m grid, keeps the bottom-right quadrant out for validation, trains with ``clay-train`` and the
``demo.yaml`` config (random 512² crops with flips and right-angle rotations), then scores the
result on held-out crops against an untrained model and a per-band mean predictor, and writes the
loss curve. These are demo weights from one 10 × 10 km scene, not Clay v0.

The SSL4EO sample (264² px) is smaller than one 512² chip, so it cannot give a training crop.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.warp import reproject

from .bands import BAND_GROUPS, CHIP_SIZE, S2_BANDS, bands_of_groups
from .checkpoint import load_clay_mae
from .model import ClayMAE, normalise, patchify_in_group_order, random_masking

DEMO_GROUPS = ("rgb", "rededge", "nir", "swir")
DEMO_DATE = "2020-02-23"
SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s2l2a-T48QUE-20200223"
CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
WEIGHTS = Path(__file__).parent / "demo" / "clay-demo-tiny-s2.pt"
WEIGHTS_DESCRIPTION = (
    "demo weights: Clay 'tiny' (not Clay v0), S2 groups only, pretrained by clay-train on one real "
    "Sentinel-2 L2A scene (T48QUE, 2020-02-23, ~10 × 10 km)"
)


def stack_scene(source: Path = SOURCE) -> tuple[np.ndarray, dict]:
    """The 10 S2 bands on the 10 m grid of B02 (bilinear for the 20 m bands), uint16 ``[10, H, W]``."""
    with rasterio.open(source / "B02.tif") as ref:
        profile = ref.profile
        cube = np.zeros((len(S2_BANDS), ref.height, ref.width), np.uint16)
        for i, band in enumerate(S2_BANDS):
            with rasterio.open(source / f"{band}.tif") as src:
                reproject(rasterio.band(src, 1), cube[i], dst_transform=ref.transform, dst_crs=ref.crs,
                          resampling=Resampling.bilinear)  # fmt: skip
    return cube, profile


def write_region(path: Path, cube: np.ndarray, profile: dict, rows: slice, cols: slice) -> None:
    transform = profile["transform"] * profile["transform"].translation(cols.start, rows.start)
    region = cube[:, rows, cols]
    out = profile | {"count": region.shape[0], "height": region.shape[1], "width": region.shape[2],
                     "transform": transform, "compress": "deflate", "tiled": True, "blockxsize": 256,
                     "blockysize": 256, "dtype": "uint16"}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **out) as dst:
        dst.write(region)
        for i, band in enumerate(S2_BANDS, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(date=DEMO_DATE)


def prepare(out: Path, source: Path = SOURCE) -> tuple[Path, Path]:
    """Training regions (top half, bottom-left quadrant) and the held-out bottom-right quadrant."""
    cube, profile = stack_scene(source)
    h, w = cube.shape[1:]
    half_h, half_w = h // 2, w // 2
    train, val = out / "train", out / "val"
    write_region(train / "top-half.tif", cube, profile, slice(0, half_h), slice(0, w))
    write_region(train / "bottom-left.tif", cube, profile, slice(half_h, h), slice(0, half_w))
    write_region(val / "bottom-right.tif", cube, profile, slice(half_h, h), slice(half_w, w))
    return train, val


def held_out_crops(val_file: Path, count: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` fixed 512² crops of the held-out quadrant (corners, centre, and rotations of them)."""
    from .data import ChipDataset, inspect_chip

    chip = inspect_chip(val_file, DEMO_GROUPS)
    dataset = ChipDataset([chip], DEMO_GROUPS)
    item = dataset[0]
    with rasterio.open(val_file) as src:
        pixels = src.read(out_dtype="float32")
    spare_r, spare_c = chip.height - CHIP_SIZE, chip.width - CHIP_SIZE
    origins = [(0, 0), (0, spare_c), (spare_r, 0), (spare_r, spare_c), (spare_r // 2, spare_c // 2)]
    crops = []
    for i in range(count):
        r, c = origins[i % len(origins)]
        crops.append(np.rot90(pixels[:, r : r + CHIP_SIZE, c : c + CHIP_SIZE], k=i // len(origins), axes=(1, 2)))
    cube = normalise(torch.from_numpy(np.ascontiguousarray(np.stack(crops))), bands_of_groups(DEMO_GROUPS))
    return cube, item["lonlat"].expand(count, 2).clone(), item["date"].expand(count, 3).clone()


def masked_mse_scores(model: ClayMAE, cube, lonlat, date, seeds: int = 4) -> dict[str, float]:
    """Masked-patch MSE (the training loss) of the model and of a per-band mean predictor (each masked
    patch predicted as the mean of that band over the chip's visible patches), on the same masks."""
    from .model import masked_patch_loss

    groups, n_tokens = DEMO_GROUPS, len(DEMO_GROUPS) * 256
    model_losses, mean_losses = [], []
    target = patchify_in_group_order(cube, groups)  # [B, C, L, P]
    group_of_token = torch.arange(n_tokens) // 256
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        unmasked, mask = random_masking(cube.shape[0], n_tokens, model.mask_ratio, generator)
        with torch.no_grad():
            encoded = model.encoder.forward_masked(cube, lonlat, date, unmasked, groups)
            pixels = model.decoder(encoded, unmasked, groups)
            model_losses.append(masked_patch_loss(cube, pixels, mask, groups).item())
        prediction = torch.empty_like(target)
        channel = 0
        for g, name in enumerate(groups):
            width = len(BAND_GROUPS[name])
            visible = (1 - mask[:, group_of_token == g])[:, None, :, None]  # [B, 1, L, 1]
            part = target[:, channel : channel + width]
            means = (part * visible).sum(dim=(2, 3), keepdim=True) / (visible.sum(dim=(2, 3), keepdim=True) * part.shape[-1])
            prediction[:, channel : channel + width] = means.expand_as(part)
            channel += width
        mean_losses.append(masked_patch_loss(cube, prediction, mask, groups).item())
    return {"model": float(np.mean(model_losses)), "per_band_mean": float(np.mean(mean_losses))}


def evaluate(checkpoint: Path, val_file: Path) -> dict[str, float]:
    cube, lonlat, date = held_out_crops(val_file)
    trained = masked_mse_scores(load_clay_mae(checkpoint), cube, lonlat, date)
    torch.manual_seed(0)
    untrained = masked_mse_scores(ClayMAE("tiny").eval(), cube, lonlat, date)
    return {"demo_weights": trained["model"], "untrained": untrained["model"], "per_band_mean": trained["per_band_mean"]}


def plot_loss_curve(metrics_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    with open(metrics_csv) as handle:
        for row in csv.DictReader(handle):
            if row.get("train/loss"):
                train.append((int(row["step"]), float(row["train/loss"])))
            if row.get("val/loss"):
                val.append((int(row["step"]), float(row["val/loss"])))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train (masked-patch MSE)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation (held-out quadrant)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title("Clay tiny demo weights on T48QUE (S2 only)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def save_demo_weights(checkpoint: Path, target: Path = WEIGHTS) -> Path:
    """The trained model in float16 (half the size; loads into float32 with load_clay_mae)."""
    model = load_clay_mae(checkpoint)
    state = {f"model.{k}": v.half() for k, v in model.state_dict().items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": {"size": "tiny", "groups": list(DEMO_GROUPS)},
                "description": WEIGHTS_DESCRIPTION}, target)  # fmt: skip
    return target


def best_checkpoint(logs: Path) -> Path:
    """The top-k checkpoint with the lowest validation loss (its file name ends with it): one small
    scene overfits, so the weights are taken where held-out loss was lowest, not at the last step."""
    candidates = [p for p in logs.rglob("clay-*.ckpt")]
    return min(candidates, key=lambda p: float(p.stem.rsplit("-", 1)[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--source", type=Path, default=SOURCE, help="the T48QUE per-band folder")
    parser.add_argument("--install", action="store_true", help=f"also write the best weights to {WEIGHTS}")
    args = parser.parse_args()
    train_dir, val_dir = prepare(args.out / "data", args.source)
    from .cli import main as clay_train

    logs = args.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    clay_train(["fit", "--config", str(CONFIG), "--data.data_dir", str(train_dir), "--data.val_dir", str(val_dir),
                "--trainer.default_root_dir", str(logs)])  # fmt: skip
    best = best_checkpoint(logs)
    metrics = next(logs.rglob("metrics.csv"))
    scores = evaluate(best, val_dir / "bottom-right.tif") | {"checkpoint": best.name}
    (args.out / "evaluation.json").write_text(json.dumps(scores, indent=2))
    plot_loss_curve(metrics, args.out / "loss-curve.png")
    shutil.copy(metrics, args.out / "metrics.csv")
    print(json.dumps(scores, indent=2))
    if args.install:
        print(save_demo_weights(best))


if __name__ == "__main__":
    main()
