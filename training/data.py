"""Training chips for pretraining: a Dataset that reads them through the runtime and a Lightning DataModule.

Chips come from whole scenes (``--data.scenes``: whatever clay-run takes — folders of per-band
files, stacks, STAC Items, manifests — found by clay-run's own discovery, windows cut at random
positions inside each scene's valid area) or from pre-cut chip files (``--data.data_dir``).
A chip file is a GeoTIFF holding Clay's bands (13 in spec order, or any superset named by band
descriptions), a CRS and a sensing date (a ``date=YYYY-MM-DD`` tag, like the release's training
chips, or anything else the runtime reads a date from). Each
file is opened as the runtime opens a scene (:func:`clay.runtime.scenes.scene.open_scene`) and its windows
are read by the runtime's own reader (:func:`clay.runtime.scenes.reader.read_chip`), so a file trains on
exactly the values it would be embedded with: GDAL scale/offset, Sentinel-2 offsets, SAR units,
masks and nodata, and the date all follow one set of rules.

Two options let real samples that are not release chips train too: ``partial_groups`` (a file
trains on the configured band groups it holds; batches never mix group sets) and ``pad_small`` (an
image smaller than a chip is padded like the runtime pads a small scene, and its padding is kept
out of the loss). Files that cannot serve (too few bands, no CRS, no date, too small, values in
units the runtime refuses) are found when the data is set up, logged with their reason and left
out; windows holding any invalid pixel (nodata, NaN, a mask, S2's 0) or values the runtime refuses
are dropped when read, also with a logged reason, so that one bad file never stops an epoch.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from clay.runtime.bands import (
    BAND_MEANS,
    BAND_NAMES,
    BAND_STDS,
    CHIP_SIZE,
    GROUP_NAMES,
    INPUT_UNITS,
    PATCH_SIZE,
    bands_of_groups,
    complete_groups,
    parse_groups,
)
from clay.runtime.errors import SceneError
from clay.runtime.options import RunOptions
from clay.runtime.resampling import RUNTIME_READER
from clay.runtime.scenes.discovery import discover_scenes
from clay.runtime.scenes.grid import Chip
from clay.runtime.scenes.inputs import SceneFiles
from clay.runtime.scenes.reader import read_chip
from clay.runtime.scenes.scene import Scene, as_scene_files, open_scene, scene_header
from torch.utils.data import DataLoader, Dataset

from .data_options import args_section

log = logging.getLogger(__name__)

#: Files whose opened scenes a dataset keeps per process (~10 KB each); others are opened again (~2 ms).
SCENES_KEPT = 256
#: Random window positions tried per sample before it is given up (``--data.window_tries``).
WINDOW_TRIES = 8


class ChipError(ValueError):
    """A chip file that cannot be used for training; the message names the file and the reason."""


@dataclass(frozen=True)
class ChipInputs:
    """What the runtime needs to open a file for training (:class:`clay.runtime.scenes.scene.SceneInputs`):
    the groups' bands in spec order, their means (Clay units) and the chip size."""

    bands: tuple[str, ...]
    band_means: tuple[float, ...]
    chip_size: int = CHIP_SIZE
    patch_size: int = PATCH_SIZE
    input_units: dict[str, str] = field(default_factory=lambda: dict(INPUT_UNITS))
    # Training reads chips as the demo weights and earlier clay-train checkpoints were trained:
    # bilinear (clay.runtime.resampling.RUNTIME_READER), so that clay-export records what they saw.
    resampling: str | None = RUNTIME_READER

    @classmethod
    def of_groups(cls, groups: Sequence[str], chip_size: int = CHIP_SIZE) -> ChipInputs:
        bands = bands_of_groups(groups)
        return cls(tuple(BAND_NAMES[b] for b in bands), tuple(BAND_MEANS[b] for b in bands), chip_size)


#: The runtime's hints name clay-run's options and RunOptions fields; clay-train's are its data
#: module's arguments (LightningCLI: ``--data.NAME``), and a chip is dated by its tags.
_TRAINING_TERMS = (
    (re.compile(r" \(RunOptions\([^)]*\) in Python\)"), ""),
    (re.compile(r"--s2-offset (\S+)"), r"--data.s2_offset \1"),
    (re.compile(r"--sar-units (\S+)"), r"--data.sar_units \1"),
    (re.compile(r"pass --date YYYY-MM-DD"), "tag the file with date=YYYY-MM-DD"),
    (re.compile(r"\(export an engine for them with clay-export --groups (\S+)\)"),
     r"(train on them with --data.groups \1, or each file on the groups it has with --data.partial_groups true)"),
)


def in_training_terms(message: str) -> str:
    """A runtime message with its hints pointing at clay-train's options."""
    for pattern, replacement in _TRAINING_TERMS:
        message = pattern.sub(replacement, message)
    return message


@dataclass(frozen=True)
class ChipFile:
    """One usable chip file or scene, as setup found it: small (a training set may hold millions), the
    runtime's :class:`~clay.runtime.scenes.scene.Scene` is made again where it is read (:meth:`open`).
    ``scene``: the files of a scene found by clay-run's discovery (``None``: the chip file ``path``)."""

    path: Path
    height: int
    width: int
    date: tuple[int, int, int]
    groups: tuple[str, ...] = GROUP_NAMES  # the band groups this file trains on
    chip_size: int = CHIP_SIZE
    options: RunOptions = field(default_factory=RunOptions)  # sar_units and s2_offset, as clay-run takes them
    scene: SceneFiles | None = None

    @property
    def name(self) -> str:
        """The file's name, or the scene's (a folder's, a STAC Item's id): what the validation split hashes."""
        return self.scene.name if self.scene is not None else self.path.name

    @property
    def key(self) -> str:
        """Tells files and scenes apart (an ItemCollection's Items share its path)."""
        return f"{self.path}#{self.name}"

    def open(self) -> Scene:
        """The runtime's scene of this file (headers only); raises SceneError."""
        source = self.scene if self.scene is not None else self.path
        return open_scene(source, ChipInputs.of_groups(self.groups, self.chip_size), self.options)

    def is_small(self, chip_size: int) -> bool:
        return self.height < chip_size or self.width < chip_size


def inspect_chip(
    path: str | Path | SceneFiles,
    groups: Sequence[str],
    chip_size: int = CHIP_SIZE,
    partial_groups: bool = False,
    pad_small: bool = False,
    options: RunOptions | None = None,
    warn: Callable[[str], None] | None = None,
) -> ChipFile:
    """Open a chip file, or a scene found by clay-run's discovery (:class:`SceneFiles`), as the runtime
    opens a scene for the ``groups``' bands (headers only, no pixel read), or raise ChipError naming
    the file and the reason. ``options``: ``sar_units`` and
    ``s2_offset`` as for clay-run. The runtime's warnings about the file (a date taken from the TIFF
    DateTime, an undeclared S2 offset, an unusual pixel size) go to ``warn`` (default: logged)."""
    files = path if isinstance(path, SceneFiles) else None
    path = files.path if files is not None else Path(path)
    options = options or RunOptions()
    try:
        if partial_groups:
            names = _band_names(files or as_scene_files(path))
            if names:
                groups = complete_groups(names, groups)
                if not groups:
                    raise ChipError(f"{path}: holds no complete band group of {', '.join(GROUP_NAMES)}")
        scene = open_scene(files or path, ChipInputs.of_groups(groups, chip_size), options)
    except SceneError as exc:
        raise ChipError(in_training_terms(str(exc))) from None
    for warning in scene.warnings:
        (warn or log.warning)(in_training_terms(warning))
    day = (scene.date.year, scene.date.month, scene.date.day)
    chip = ChipFile(path, scene.height, scene.width, day, tuple(groups), chip_size, options, files)
    if chip.is_small(chip_size) and not (pad_small and min(chip.height, chip.width) >= PATCH_SIZE):
        raise ChipError(f"{path}: {chip.width}×{chip.height} px is smaller than a {chip_size}² chip")
    return chip


def _band_names(files: SceneFiles) -> set[str]:
    """The Clay bands a file or scene holds, by the runtime's band matching (names, STAC declarations)."""
    if files.problem:
        raise SceneError(files.problem)
    return {n for p in files.files for n in scene_header(files, p).names if n}


class ChipDataset(Dataset):
    """Normalised chips with their lon/lat and date, for the masked autoencoder.

    Files larger than a chip give a random window (``augment``) or their centre window; smaller
    ones are edge-padded at the bottom and right (as the runtime pads a small scene) and their
    item's ``valid`` marks the patches that hold real pixels. ``augment`` also applies random flips
    and right-angle rotations; ``samples_per_file`` draws that many windows from each file per
    epoch (for a few large scenes rather than many chips). Every file must train on ``groups``.
    Pixels are read by the runtime's reader in Clay units. A window with any invalid pixel (the
    release rejected chips with S2 nodata) is drawn again at another random position, up to
    ``window_tries`` positions (so that a scene's chips lie inside its valid area); a sample
    without a valid window, or whose values the runtime refuses, is ``None``: :func:`collate_chips`
    drops it.

    Item: ``pixels`` float32 ``[C, chip_size, chip_size]`` normalised by the band means and
    standard deviations; ``lonlat`` ``[2]`` degrees, the window's centre as the runtime computes
    it; ``date`` ``[3]`` year, month, day; ``valid`` ``[(chip_size / 32)²]`` 1 for a patch of real
    pixels; ``origin`` ``[2]`` the window's (row, col) in the scene's pixels.
    """

    def __init__(
        self,
        files: Sequence[ChipFile],
        groups: Sequence[str] = GROUP_NAMES,
        chip_size: int = CHIP_SIZE,
        augment: bool = False,
        samples_per_file: int = 1,
        window_tries: int = WINDOW_TRIES,
    ) -> None:
        self.files = list(files)
        self.samples_per_file = samples_per_file
        self.window_tries = max(1, window_tries)
        self.groups = tuple(groups)
        self.chip_size = chip_size
        self.augment = augment
        bands = bands_of_groups(self.groups)
        for chip in self.files:
            if chip.groups != self.groups or chip.chip_size != chip_size:
                raise ValueError(f"{chip.path}: set up for {chip.groups} at {chip.chip_size} px, "
                                 f"not this dataset's {self.groups} at {chip_size} px")  # fmt: skip
        # Per process (each DataLoader worker has its own): recently read files' scenes, and the files
        # the runtime refused while reading (their units, a read error), skipped from then on.
        self._scenes: OrderedDict[str, Scene] = OrderedDict()
        self._refused: set[str] = set()
        self._mean = np.array([BAND_MEANS[b] for b in bands], dtype=np.float32)[:, None, None]
        self._std = np.array([BAND_STDS[b] for b in bands], dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.files) * self.samples_per_file

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        chip = self.files[index % len(self.files)]
        # Drawn from torch's generator so that Lightning's seed_everything (workers included) makes
        # the crops and flips reproducible, and each epoch sees new ones.
        rng = np.random.default_rng(int(torch.randint(2**31, ())))
        size = self.chip_size
        if chip.key in self._refused:
            return None
        # A random window that holds an invalid pixel is drawn again elsewhere; the centre window
        # (no augment) and a file no larger than a chip have one position only.
        tries = self.window_tries if self.augment and (chip.height > size or chip.width > size) else 1
        for _ in range(tries):
            row, col = self._window_origin(chip, rng)
            window = Chip(row, col, min(size, chip.height), min(size, chip.width))
            try:
                scene = self._scene(chip)
                pixels, nodata_fraction = read_chip(scene, window)
            except SceneError as exc:  # names the file, the window where it is a read error, and the reason
                self._refused.add(chip.key)
                log.warning("skipping %s from now on (window (%d, %d)): %s", chip.path, row, col, in_training_terms(str(exc)))
                return None
            if nodata_fraction == 0:
                break
        else:
            where = f"window ({row}, {col})" if tries == 1 else f"{tries} random windows, the last ({row}, {col})"
            log.warning("skipping chip %s %s: %d of its %d pixels are nodata, NaN or masked", chip.path, where,
                        round(nodata_fraction * window.height * window.width), window.height * window.width)  # fmt: skip
            return None
        pixels = pixels[:, : window.height, : window.width]  # the real pixels; padded again after the flips
        if self.augment:
            pixels = np.rot90(pixels, k=int(rng.integers(4)), axes=(1, 2))
            if rng.random() < 0.5:
                pixels = pixels[:, :, ::-1]
        rows, cols = pixels.shape[1:]
        pixels = (pixels - self._mean) / self._std
        if (rows, cols) != (size, size):
            pixels = np.pad(pixels, ((0, 0), (0, size - rows), (0, size - cols)), mode="edge")
        grid = size // PATCH_SIZE
        valid = (np.arange(1, grid + 1)[:, None] * PATCH_SIZE <= rows) & (np.arange(1, grid + 1)[None, :] * PATCH_SIZE <= cols)
        return {
            "pixels": torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)),
            "lonlat": torch.tensor(scene.chip_centre(window), dtype=torch.float32),
            "date": torch.tensor(chip.date, dtype=torch.float32),
            "valid": torch.from_numpy(valid.reshape(-1).astype(np.float32)),
            "origin": torch.tensor((row, col), dtype=torch.int64),
            "groups": self.groups,
        }

    def _scene(self, chip: ChipFile) -> Scene:
        scene = self._scenes.get(chip.key)
        if scene is None:
            scene = self._scenes[chip.key] = chip.open()
            if len(self._scenes) > SCENES_KEPT:
                self._scenes.popitem(last=False)
        else:
            self._scenes.move_to_end(chip.key)
        return scene

    def _window_origin(self, chip: ChipFile, rng: np.random.Generator) -> tuple[int, int]:
        spare_rows, spare_cols = max(0, chip.height - self.chip_size), max(0, chip.width - self.chip_size)
        if self.augment:
            return int(rng.integers(spare_rows + 1)), int(rng.integers(spare_cols + 1))
        return spare_rows // 2, spare_cols // 2


def collate_chips(items: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Stack the usable items of a batch; ``None`` when every item was rejected."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    batch = {key: torch.stack([item[key] for item in kept]) for key in kept[0] if key != "groups"}
    return batch | {"groups": kept[0]["groups"]}


def find_chip_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ChipError(f"{directory}: no such data directory")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))


def find_scenes(paths: Sequence[str | Path]) -> list[SceneFiles]:
    """The scenes ``paths`` name, found as clay-run finds them (:func:`~clay.runtime.scenes.discovery.discover_scenes`)."""
    try:
        return discover_scenes([str(p) for p in paths])
    except SceneError as exc:
        raise ChipError(in_training_terms(str(exc))) from None


def usable_chips(
    paths: Sequence[Path | SceneFiles], groups: Sequence[str], chip_size: int, partial_groups: bool = False, pad_small: bool = False,
    options: RunOptions | None = None,
) -> list[ChipFile]:
    """The files that pass :func:`inspect_chip`; the others are logged with their reason. The
    runtime's warnings are logged once per kind with the number of files and one of them (an
    archive's files mostly share them)."""
    usable = []
    said: dict[str, list[str]] = {}

    def collect(warning: str, path: Path) -> None:
        said.setdefault(warning.replace(str(path), "{file}"), []).append(str(path))

    for path in paths:
        label = path.path if isinstance(path, SceneFiles) else path
        try:
            usable.append(inspect_chip(path, groups, chip_size, partial_groups, pad_small, options,
                                       warn=lambda w, p=label: collect(w, p)))  # fmt: skip
        except ChipError as exc:
            log.warning("skipping %s", exc)
    for warning, files in said.items():
        log.warning("%d file(s), e.g. %s", len(files), warning.replace("{file}", files[0]))
    return usable


def is_validation_file(name: str, fraction: float, seed: int) -> bool:
    """Stable split by file (or scene) name: the same file stays on the same side across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class ChipDataModule(L.LightningDataModule):
    """Chips cut from ``scenes`` (what clay-run takes), or chip files under ``data_dir``
    (recursively); split by file or scene name unless ``val_scenes`` / ``val_dir`` is given.

    With ``partial_groups`` or ``pad_small``, files fall into kinds (their band groups, padded or
    not); each kind has its own loader and a training step takes one batch of every kind (the
    smaller kinds cycle). ``batch_size_small`` sets the batch of padded kinds, most of whose pixels
    are padding. Validation files must all be of one kind. ``sar_units`` (auto, linear, db) and
    ``s2_offset`` (DN to subtract from every S2 band, overriding what files declare) are clay-run's
    ``--sar-units`` and ``--s2-offset``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        val_dir: str | None = None,
        scenes: list[str] | None = None,
        val_scenes: list[str] | None = None,
        val_fraction: float = 0.1,
        groups: list[str] | str | None = None,  # a list, or "rgb,swir" as clay-export --groups takes it
        batch_size: int = 10,
        num_workers: int = 0,
        chip_size: int = CHIP_SIZE,
        augment: bool = True,
        samples_per_file: int = 1,
        val_samples_per_file: int = 1,
        seed: int = 42,
        partial_groups: bool = False,
        pad_small: bool = False,
        batch_size_small: int | None = None,
        sar_units: str = "auto",
        s2_offset: float | None = None,
        window_tries: int = WINDOW_TRIES,
    ) -> None:
        super().__init__()
        if (scenes is None) == (data_dir is None):
            raise ChipError("give either --data.scenes (scenes, as clay-run takes them) or --data.data_dir "
                            "(a folder of chip files)" + (", not both" if scenes is not None else ""))  # fmt: skip
        if val_scenes is not None and scenes is None:
            raise ChipError("--data.val_scenes goes with --data.scenes (with --data.data_dir: --data.val_dir)")
        if val_dir is not None and data_dir is None:
            raise ChipError("--data.val_dir goes with --data.data_dir (with --data.scenes: --data.val_scenes)")
        self.scenes, self.val_scenes = scenes, val_scenes
        self.window_tries = window_tries
        self.options = RunOptions(sar_units=sar_units, s2_offset=s2_offset)  # as clay-run's --sar-units, --s2-offset
        self.partial_groups = partial_groups
        self.pad_small = pad_small
        self.batch_size_small = batch_size_small
        self.samples_per_file = samples_per_file
        self.val_samples_per_file = val_samples_per_file
        self.data_dir = data_dir
        self.val_dir = val_dir
        self.val_fraction = val_fraction
        self.groups = parse_groups(groups)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.chip_size = chip_size
        self.augment = augment
        self.seed = seed
        self.train_sets: dict[str, ChipDataset] = {}
        self.val_set: ChipDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_sets:
            return
        options = (self.groups, self.chip_size, self.partial_groups, self.pad_small, self.options)
        if self.scenes is not None:
            usable = usable_chips(find_scenes(self.scenes), *options)
            held_out = usable_chips(find_scenes(self.val_scenes), *options) if self.val_scenes else None
        else:
            usable = usable_chips(find_chip_files(self.data_dir), *options)
            held_out = usable_chips(find_chip_files(self.val_dir), *options) if self.val_dir else None
        if held_out is not None:
            train, val = usable, held_out
        else:  # split the usable files, so that an unusable one never takes validation's place
            train, val = [], []
            for chip in usable:
                (val if is_validation_file(chip.name, self.val_fraction, self.seed) else train).append(chip)
            if not val and len(train) > 1:
                val = [train.pop()]
            elif not train:  # the split put every file into validation: training comes first
                train, val = val, []
                if len(train) > 1:
                    val = [train.pop()]
        if not train:
            what = " ".join(map(str, self.scenes)) if self.scenes is not None else self.data_dir
            kind = "scenes" if self.scenes is not None else "chip files"
            raise ChipError(f"{what}: no usable {kind} (see the warnings above)")
        log.info("chips: %d for training, %d for validation", len(train), len(val))
        if held_out is None and val:  # split here: say what was held out (a few names), as it may be half the data
            names = ", ".join(chip.name for chip in val[:3]) + (f" and {len(val) - 3} more" if len(val) > 3 else "")
            log.warning("held out for validation: %d of %d (%s); choose with --data.val_scenes / --data.val_dir",
                        len(val), len(usable), names)  # fmt: skip
        if not val:
            more = "--data.val_scenes or more scenes" if self.scenes is not None else "--data.val_dir or more files"
            log.warning("no validation chips (give %s): val/loss is not computed, so checkpoints keep only the "
                        "last step", more)  # fmt: skip
        for key, files in self._kinds(train).items():
            self.train_sets[key] = ChipDataset(files, files[0].groups, self.chip_size, self.augment, self.samples_per_file,
                                               self.window_tries)  # fmt: skip
            log.info("training kind %s: %d files", key, len(files))
        kinds = self._kinds(val)
        if len(kinds) > 1:
            raise ChipError(f"validation files are of {len(kinds)} kinds ({', '.join(kinds)}); give files of one kind")
        files = next(iter(kinds.values()), [])
        self.val_set = ChipDataset(files, files[0].groups if files else self.groups, self.chip_size, False,
                                   self.val_samples_per_file, self.window_tries)  # fmt: skip

    def _kinds(self, files: list[ChipFile]) -> dict[str, list[ChipFile]]:
        kinds: dict[str, list[ChipFile]] = {}
        for chip in files:
            key = ",".join(chip.groups) + (" (padded)" if chip.is_small(self.chip_size) else "")
            kinds.setdefault(key, []).append(chip)
        return kinds

    def train_dataloader(self):
        assert self.train_sets
        loaders = {key: self._loader(dataset, shuffle=True) for key, dataset in self.train_sets.items()}
        if len(loaders) == 1:
            return next(iter(loaders.values()))
        from lightning.pytorch.utilities import CombinedLoader

        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: ChipDataset, shuffle: bool) -> DataLoader:
        padded = any(f.is_small(self.chip_size) for f in dataset.files)
        return DataLoader(
            dataset,
            batch_size=(self.batch_size_small or self.batch_size) if padded else self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_chips,
            persistent_workers=False,
        )


ChipDataModule.__doc__ = (ChipDataModule.__doc__ or "") + args_section()  # what --help says of each --data.* option
