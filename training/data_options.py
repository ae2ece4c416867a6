"""What each ``--data.*`` option of ``clay-train`` means, in one place and torch-free: the data
module's docstring (which Lightning's ``clay-train fit --help`` shows) and ``clay-train --help``
(answered without importing Lightning) both read it.
"""

from __future__ import annotations

#: ``ChipDataModule``'s arguments, in its signature's order → their help (tests check the two agree).
DATA_OPTIONS: dict[str, str] = {
    "data_dir": "A folder of pre-cut chip GeoTIFFs (searched recursively), one chip per file. Instead of "
                "--data.scenes.",
    "val_dir": "Chip GeoTIFFs for validation; default: --data.val_fraction of --data.data_dir's files.",
    "scenes": "Scenes to cut training chips from, as clay-run takes them: folders of per-band files, "
              "multi-band GeoTIFFs, STAC Items or ItemCollections, .txt manifests (found and validated by "
              "clay-run's own discovery). Instead of --data.data_dir.",
    "val_scenes": "Scenes for validation (same forms as --data.scenes); default: --data.val_fraction of them.",
    "val_fraction": "Share of files or scenes held out for validation when no validation set is given "
                    "(split by file or scene name, stable across runs).",
    "groups": "Band groups to train on (rgb, rededge, nir, swir, sar, dem), as a list or 'rgb,swir'. "
              "Default: all six. Recorded in the checkpoints; clay-export exports them by default.",
    "batch_size": "Chips per batch.",
    "num_workers": "DataLoader worker processes reading chips.",
    "chip_size": "Chip side in pixels (Clay v0: 512).",
    "augment": "Random window positions, flips and right-angle rotations (else each file's centre window).",
    "samples_per_file": "Windows drawn from each file or scene per epoch (for a few large scenes rather than many "
                        "chips).",
    "val_samples_per_file": "Windows drawn from each validation file or scene.",
    "seed": "Seed of the training/validation split.",
    "partial_groups": "Let a file or scene train on the complete band groups of --data.groups it has "
                      "(batches never mix group sets).",
    "pad_small": "Train on images smaller than a chip, padded as clay-run pads a small scene (the padding "
                 "is kept out of the loss).",
    "batch_size_small": "Batch size for padded images (default: --data.batch_size).",
    "sar_units": "Units of Sentinel-1 VV/VH: auto (the band's metadata), linear or db; as clay-run's --sar-units.",
    "s2_offset": "DN to subtract from every Sentinel-2 band instead of what each file declares; as clay-run's "
                 "--s2-offset.",
    "window_tries": "Random window positions tried per sample until one holds no invalid pixel (nodata, NaN, "
                    "masked): training windows lie inside a scene's valid area.",
}


def args_section() -> str:
    """The Google-style ``Args:`` section of the data module's docstring (jsonargparse reads it)."""
    return "\n\nArgs:\n" + "".join(f"    {name}: {text}\n" for name, text in DATA_OPTIONS.items())


def help_lines(width: int = 100) -> str:
    """``--data.NAME  text`` lines for ``clay-train --help``."""
    import textwrap

    lines = []
    for name, text in DATA_OPTIONS.items():
        flag = f"  --data.{name}"
        body = textwrap.wrap(text, width - 26)
        lines.append(f"{flag:<24}{body[0]}" if len(flag) < 24 else f"{flag}\n{'':24}{body[0]}")
        lines += [f"{'':24}{more}" for more in body[1:]]
    return "\n".join(lines)
