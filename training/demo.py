"""The demo weights: a `tiny` Clay model pretrained on the real samples in ``../shared/data``.

``python -m clay.training.demo --out runs/demo`` reproduces them: it stacks the per-band Sentinel-2
scene T48QUE onto its 10 m grid and keeps its bottom-right quadrant out for validation; it stacks
the co-located SSL4EO-S12 pair (S2 L2A + S1 GRD, 264² px) onto its S2 10 m grid with the S1 dB
turned into linear power, so the SAR group trains too (that image is smaller than a chip: it is
padded like the runtime pads a small scene, and the padding is kept out of the loss). Then it trains
with ``clay-train`` and the ``demo.yaml`` config (random 512² crops with flips and right-angle
rotations), scores the result on held-out crops against an untrained model and a per-band mean
predictor, measures how much of each cell's water fraction the preview's colours carry, and writes
the loss curve. Demo weights from two small areas, not Clay v0.
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
from clay.runtime.bands import (
    BAND_GROUPS,
    BAND_NAMES,
    CHIP_SIZE,
    S2_BANDS,
    SAR_BANDS,
    bands_of_groups,
    canonical_band_name,
)
from rasterio.enums import Resampling
from rasterio.warp import reproject

from .checkpoint import DEMO_GROUPS, DEMO_WEIGHTS, load_clay_mae
from .model import ClayMAE, normalise, patchify_in_group_order, random_masking

TRAINED_GROUPS = (*DEMO_GROUPS, "sar")
DEMO_DATE = "2020-02-23"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCE = SHARED_DATA / "s2l2a-T48QUE-20200223"
PAIR = SHARED_DATA / "ssl4eo-s12-0000200"
PAIR_DATE = "2020-06-04"  # the S2 acquisition (S1: 2020-06-07); see ../shared/data/README.md
CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
WEIGHTS = DEMO_WEIGHTS
WEIGHTS_DESCRIPTION = (
    "demo weights: Clay 'tiny' (not Clay v0), pretrained by clay-train on one real Sentinel-2 L2A "
    "scene (T48QUE, 2020-02-23, ~10 × 10 km; S2 groups) and one S2 + S1 pair (SSL4EO-S12, 2.6 km; sar)"
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


def stack_pair(source: Path = PAIR) -> tuple[np.ndarray, dict, tuple[str, ...]]:
    """The pair's S2 bands and S1 VH, VV on the grid of its B2 (bilinear), S1 from dB to linear
    power (Clay v0's unit), float32 ``[12, H, W]``, and the band names in spec order."""
    files = {canonical_band_name(p.stem): p for p in sorted(source.rglob("*.tif"))}
    bands = tuple(b for b in BAND_NAMES if b in files and (b in S2_BANDS or b in SAR_BANDS))
    with rasterio.open(files["B02"]) as ref:
        profile = ref.profile
        cube = np.zeros((len(bands), ref.height, ref.width), np.float32)
        for i, band in enumerate(bands):
            with rasterio.open(files[band]) as src:
                data = src.read(1, out_dtype="float32")
                if band in SAR_BANDS:
                    data = np.power(10.0, data / 10.0, dtype=np.float32)
                reproject(data, cube[i], src_transform=src.transform, src_crs=src.crs, dst_transform=ref.transform,
                          dst_crs=ref.crs, resampling=Resampling.bilinear)  # fmt: skip
    # S1's grid stops a few pixels short of S2's at the right and bottom: keep what every band covers
    top, left, bottom, right = 0, 0, cube.shape[1], cube.shape[2]
    while bottom > top and right > left and not (cube[:, top:bottom, left:right] > 0).all():
        edges = {"top": cube[:, top], "bottom": cube[:, bottom - 1], "left": cube[:, :, left], "right": cube[:, :, right - 1]}
        worst = max(edges, key=lambda k: (edges[k] <= 0).mean())
        top, bottom = top + (worst == "top"), bottom - (worst == "bottom")
        left, right = left + (worst == "left"), right - (worst == "right")
    if bottom - top < CHIP_SIZE // 4 or right - left < CHIP_SIZE // 4:
        raise ValueError(f"{source}: the S2 and S1 grids hardly overlap")
    profile = profile | {"transform": profile["transform"] * profile["transform"].translation(left, top)}
    return np.ascontiguousarray(cube[:, top:bottom, left:right]), profile, bands


def write_region(path: Path, cube: np.ndarray, profile: dict, rows: slice, cols: slice,
                 bands: tuple[str, ...] = S2_BANDS, date: str = DEMO_DATE) -> None:  # fmt: skip
    transform = profile["transform"] * profile["transform"].translation(cols.start, rows.start)
    region = cube[:, rows, cols]
    out = profile | {"count": region.shape[0], "height": region.shape[1], "width": region.shape[2],
                     "transform": transform, "compress": "deflate", "tiled": True, "blockxsize": 256,
                     "blockysize": 256, "dtype": region.dtype.name, "nodata": None}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **out) as dst:
        dst.write(region)
        for i, band in enumerate(bands, start=1):
            dst.set_band_description(i, band)
        dst.update_tags(date=date)


def prepare(out: Path, source: Path = SOURCE, pair: Path | None = PAIR) -> tuple[Path, Path]:
    """Training regions (top half, bottom-left quadrant, the whole S2 + S1 pair unless ``pair`` is
    None) and the held-out bottom-right quadrant of T48QUE."""
    cube, profile = stack_scene(source)
    h, w = cube.shape[1:]
    half_h, half_w = h // 2, w // 2
    train, val = out / "train", out / "val"
    write_region(train / "top-half.tif", cube, profile, slice(0, half_h), slice(0, w))
    write_region(train / "bottom-left.tif", cube, profile, slice(half_h, h), slice(0, half_w))
    write_region(val / "bottom-right.tif", cube, profile, slice(half_h, h), slice(half_w, w))
    if pair is not None:
        pair_cube, pair_profile, bands = stack_pair(pair)
        rows, cols = pair_cube.shape[1:]
        write_region(train / "ssl4eo-s2-s1.tif", pair_cube, pair_profile, slice(0, rows), slice(0, cols), bands, PAIR_DATE)
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


def corner_chips(source: Path = SOURCE) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The whole scene's four non-overlapping corner chips, raw S2 values ``[4, 10, 512, 512]``, with
    the scene centre's lon/lat and the date (the runtime's metadata inputs)."""
    from rasterio.warp import transform as reproject_points

    cube, profile = stack_scene(source)
    h, w = cube.shape[1:]
    x, y = profile["transform"] * (w / 2, h / 2)
    lon, lat = (v[0] for v in reproject_points(profile["crs"], "EPSG:4326", [x], [y]))
    chips = np.stack([cube[:, r : r + CHIP_SIZE, c : c + CHIP_SIZE].astype(np.float32)
                      for r in (0, h - CHIP_SIZE) for c in (0, w - CHIP_SIZE)])  # fmt: skip
    day = [float(v) for v in DEMO_DATE.split("-")]
    return chips, torch.tensor([[lon, lat]] * len(chips)), torch.tensor([day] * len(chips))


def explained_by_three_components(vectors: np.ndarray, target: np.ndarray) -> float:
    """R² of a least-squares fit of ``target`` on the first three principal components of ``vectors``:
    the three numbers per cell the preview paints as red, green and blue."""
    from clay.runtime.outputs.preview import principal_components

    design = np.c_[principal_components(vectors, 3), np.ones(len(vectors))]
    fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return float(1 - ((fitted - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def water_probe(models: dict[str, ClayMAE], source: Path = SOURCE) -> dict[str, float]:
    """How much of each 32 px cell's open-water fraction (NDWI > 0) the preview's colours carry: the
    R² of the fraction on the first three principal components of the per-patch embeddings,
    standardised per chip as the preview does, next to the same for the cell's own band means and
    spreads (what a picture of the pixels alone would carry). The masked-patch MSE does not say
    whether the picture can show water, river included; this does."""
    from clay.runtime.outputs.preview import standardise_within_chips

    chips, lonlat, date = corner_chips(source)
    count, cells = len(chips), (CHIP_SIZE // 32) ** 2
    green, nir = chips[:, S2_BANDS.index("B03")], chips[:, S2_BANDS.index("B08")]
    water = ((green - nir) / np.maximum(green + nir, 1) > 0).reshape(count, 16, 32, 16, 32).mean((2, 4)).ravel()
    chip_of = np.repeat(np.arange(count), cells)
    cube = normalise(torch.from_numpy(chips), bands_of_groups(DEMO_GROUPS))
    scores = {}
    for name, model in models.items():
        with torch.no_grad():
            _, grid = model.encoder.embed(cube, lonlat, date, DEMO_GROUPS, patch_embeddings=True)
        vectors = grid.mean(dim=1).reshape(count * cells, -1).numpy()  # the runtime's per-patch output
        standardised = standardise_within_chips(vectors, chip_of, np.zeros_like(chip_of))
        scores[name] = explained_by_three_components(standardised, water)
    blocks = chips.reshape(count, len(S2_BANDS), 16, 32, 16, 32)
    statistics = np.concatenate([blocks.mean((3, 5)), blocks.std((3, 5))], axis=1).transpose(0, 2, 3, 1)
    statistics = np.log1p(statistics.reshape(count * cells, -1))
    scores["cell_band_statistics"] = explained_by_three_components(
        standardise_within_chips(statistics, chip_of, np.zeros_like(chip_of)), water
    )
    return scores


def evaluate(checkpoint: Path, val_file: Path, source: Path = SOURCE) -> dict:
    cube, lonlat, date = held_out_crops(val_file)
    model = load_clay_mae(checkpoint).eval()
    trained = masked_mse_scores(model, cube, lonlat, date)
    torch.manual_seed(0)
    untrained_model = ClayMAE("tiny").eval()
    untrained = masked_mse_scores(untrained_model, cube, lonlat, date)
    probe = water_probe({"demo_weights": model, "untrained": untrained_model}, source)
    return {"demo_weights": trained["model"], "untrained": untrained["model"], "per_band_mean": trained["per_band_mean"],
            "water_fraction_r2": probe}  # fmt: skip


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
    torch.save({"state_dict": state, "hyper_parameters": {"size": "tiny", "groups": list(TRAINED_GROUPS)},
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
    parser.add_argument("--pair", type=Path, default=PAIR, help="the SSL4EO-S12 S2 + S1 folder")
    parser.add_argument("--install", action="store_true", help=f"also write the best weights to {WEIGHTS}")
    args = parser.parse_args()
    train_dir, val_dir = prepare(args.out / "data", args.source, args.pair)
    from .cli import main as clay_train

    logs = args.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    clay_train(["fit", "--config", str(CONFIG), "--data.data_dir", str(train_dir), "--data.val_dir", str(val_dir),
                "--trainer.default_root_dir", str(logs)])  # fmt: skip
    best = best_checkpoint(logs)
    metrics = next(logs.rglob("metrics.csv"))
    scores = evaluate(best, val_dir / "bottom-right.tif", args.source) | {"checkpoint": best.name}
    (args.out / "evaluation.json").write_text(json.dumps(scores, indent=2))
    plot_loss_curve(metrics, args.out / "loss-curve.png")
    shutil.copy(metrics, args.out / "metrics.csv")
    print(json.dumps(scores, indent=2))
    if args.install:
        print(save_demo_weights(best))


if __name__ == "__main__":
    main()
