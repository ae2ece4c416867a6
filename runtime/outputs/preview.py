"""A picture of what the embeddings see: true colour beside the embeddings as colour.

Three panels, same scale: the scene in true colour (2–98 % stretch); the first three principal
components of the per-patch embeddings (standardised within each chip) as RGB, one 32 px cell
each; and those of the chip embeddings, one square per chip. Areas that look alike to the model get alike colours, so fields,
water and built-up land should separate without any labels. Torch-free (numpy + Pillow).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from ..metadata import EngineMetadata
from ..scenes.reader import band_reader
from ..scenes.remote import http_env
from ..scenes.scene import ReadGroup, Scene

MAX_PANEL_SIDE = 720
TITLE_HEIGHT = 44  # px above the panels: two title lines, then the panel labels
TITLE_LINE = 12  # px per title line (Pillow's default font)
TITLE_LINES = 2
#: Characters Pillow's default font has no glyph for (drawn as boxes), and what to draw instead.
GLYPHLESS = str.maketrans({"×": "x", "–": "-", "—": "-", "…": "..."})
BACKGROUND = (24, 24, 24)


def stretch(values: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Per-channel percentile stretch of ``[..., C]`` values to 0–1 (NaN stays NaN)."""
    lo = np.nanpercentile(values, low, axis=tuple(range(values.ndim - 1)))
    hi = np.nanpercentile(values, high, axis=tuple(range(values.ndim - 1)))
    return np.clip((values - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)


def principal_components(vectors: np.ndarray, count: int = 3) -> np.ndarray:
    """Scores of the first ``count`` principal components ``[N, count]`` (zeros where N is too small)."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    scores = np.zeros((len(vectors), count))
    if len(vectors) > 1:
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        k = min(count, len(s))
        scores[:, :k] = u[:, :k] * s[:k]
    return scores


def standardise_within_chips(vectors: np.ndarray, chip_rows, chip_cols) -> np.ndarray:
    """Z-score each chip's patch embeddings. Every patch token also carries its chip's context (the
    metadata tokens and attention over the whole chip), which otherwise dominates the components and
    paints whole chips in one colour; within a chip, what remains is what differs on the ground."""
    out = vectors.astype(np.float64)
    keys = np.stack([np.asarray(chip_rows), np.asarray(chip_cols)], axis=1)
    for key in np.unique(keys, axis=0):
        rows = np.all(keys == key, axis=1)
        out[rows] = (out[rows] - out[rows].mean(axis=0)) / (out[rows].std(axis=0) + 1e-6)
    return out


def true_colour(scene: Scene, height: int, width: int) -> np.ndarray:
    """B04/B03/B02 (or the first band, grey, when the engine has no rgb group), decimated read."""
    wanted = [b for b in ("B04", "B03", "B02") if b in scene.bands] or [scene.bands[0]]
    with http_env(scene.http_timeout):  # a remote scene's decimated read ends too
        channels = _channels(scene, wanted, height, width)
    image = stretch(np.stack(channels, axis=-1))
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.nan_to_num(image)


def _channels(scene: Scene, wanted: list[str], height: int, width: int) -> list[np.ndarray]:
    channels = []
    for band in wanted:
        position = scene.bands.index(band)
        source = scene.sources[position]
        group = ReadGroup(source.path, (position,), (source.index,), source.mode, source.source_transform)
        handle = band_reader(scene, group, warp=source.mode != "direct")
        data = handle.read(source.index, out_shape=(height, width), out_dtype="float32")
        data[(data <= 0) | ~np.isfinite(data)] = np.nan
        channels.append(data)
    return channels


def paint_cells(height: int, width: int, scale: float, rows, cols, size: int, colours: np.ndarray) -> np.ndarray:
    """Paint one square of ``size`` scene pixels per (row, col) origin onto a ``[height, width, 3]`` canvas."""
    canvas = np.full((height, width, 3), np.nan)
    for r, c, colour in zip(rows, cols, colours):
        top, left = int(round(r * scale)), int(round(c * scale))
        bottom, right = int(round((r + size) * scale)), int(round((c + size) * scale))
        canvas[top:bottom, left:right] = colour
    return canvas


def title_lines(text: str, width: float, measure: Callable[[str], float], count: int = TITLE_LINES) -> list[str]:
    """``text`` wrapped at spaces into at most ``count`` lines of at most ``width`` (``measure``: a
    line's drawn width in pixels). Words are never cut; what does not fit ends in "..." after a word."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        elif len(lines) < count:
            lines.append(word)
        else:
            last = lines[-1]
            while last and measure(last + " ...") > width:
                last = last.rsplit(" ", 1)[0] if " " in last else ""
            lines[-1] = (last + " ...").strip()
            break
    return lines


def render_preview(
    scene: Scene, chips: pa.Table, patches: pa.Table | None, engine: EngineMetadata, engine_name: str, png: Path
) -> Path:
    """Write the three-panel picture for an embedded scene to ``png``."""
    scale = min(1.0, MAX_PANEL_SIDE / max(scene.height, scene.width))
    height, width = max(1, int(scene.height * scale)), max(1, int(scene.width * scale))
    panels = [true_colour(scene, height, width)]
    labels = ["true colour (B04, B03, B02; 2-98 % stretch)"]
    if patches is not None and patches.num_rows:
        vectors = np.stack(patches["embeddings"].to_numpy(zero_copy_only=False))
        vectors = standardise_within_chips(vectors, patches["chip_row"].to_numpy(), patches["chip_col"].to_numpy())
        colours = stretch(principal_components(vectors))
        size = engine.patch_size
        panels.append(paint_cells(height, width, scale, patches["row"].to_pylist(), patches["col"].to_pylist(), size, colours))
        labels.append(f"patch embeddings, standardised per chip: PCA 1-3 as RGB ({size} px cells)")
    vectors = np.stack(chips["embeddings"].to_numpy(zero_copy_only=False))
    colours = stretch(principal_components(vectors))
    panels.append(paint_cells(height, width, scale, chips["row"].to_pylist(), chips["col"].to_pylist(), engine.chip_size, colours))
    labels.append(f"chip embeddings: PCA 1-3 as RGB ({engine.chip_size} px chips)")

    gap = 8
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) + 1) * gap, height + TITLE_HEIGHT + 2 * gap), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        pixels = np.where(np.isnan(panel), np.array(BACKGROUND) / 255, panel)
        x = gap + i * (width + gap)
        canvas.paste(Image.fromarray((pixels * 255).astype(np.uint8)), (x, TITLE_HEIGHT + gap))
        draw.text((x, TITLE_HEIGHT - 14), label, fill=(220, 220, 220))
    title = (f"{scene.name}  |  {scene.date.isoformat()}  |  engine {engine_name} ({engine.precision})  |  "
             f"model: {engine.model_size}, {engine.weights}").translate(GLYPHLESS)  # fmt: skip
    for k, line in enumerate(title_lines(title, canvas.width - 2 * gap, draw.textlength)):
        draw.text((gap, 4 + k * TITLE_LINE), line, fill=(255, 255, 255))
    png.parent.mkdir(parents=True, exist_ok=True)
    partial = png.with_name(png.name + ".partial.png")
    canvas.save(partial)
    partial.replace(png)
    return png
