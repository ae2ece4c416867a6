"""A PNG of a change map: one panel per compared date, on one colour scale, with a colour bar.

Cells are drawn as squares (nearest, no smoothing), nodata in the preview's background grey. The
scale runs from 0 (no change) to the 99th percentile of every band's distances together (at least
0.01), the same for every panel so that dates compare; cells above it take the top colour. Colours:
matplotlib's ``inferno`` (perceptually uniform, readable in grey), sampled at 9 points and
interpolated linearly (matplotlib 3's ``_cm_listed._inferno_data`` rows 0, 32, …, 224 and 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..outputs.preview import BACKGROUND, GLYPHLESS, TITLE_LINE, title_lines
from ..outputs.publish import naming, partial_path, publish
from .distance import ChangeMap

INFERNO = np.array([
    (0.001462, 0.000466, 0.013866), (0.129285, 0.047293, 0.290788), (0.3415, 0.062325, 0.429425),
    (0.54092, 0.134729, 0.415123), (0.735683, 0.215906, 0.330245), (0.894305, 0.353399, 0.193584),
    (0.978422, 0.557937, 0.034931), (0.974638, 0.797692, 0.206332), (0.988362, 0.998364, 0.644924),
])  # fmt: skip
MAX_PANEL_SIDE = 480  # px of the longer side of a panel
GAP = 8
HEADER = 3 * TITLE_LINE + 12  # two title lines and the panel labels
BAR_HEIGHT = 12
PERCENTILE = 99


def colours(values: np.ndarray, top: float) -> np.ndarray:
    """``values`` (NaN: nodata) → ``[..., 3]`` uint8 on the inferno ramp from 0 to ``top``."""
    position = np.clip(np.nan_to_num(values, nan=0.0) / top, 0, 1) * (len(INFERNO) - 1)
    low = np.minimum(position.astype(int), len(INFERNO) - 2)
    frac = (position - low)[..., None]
    rgb = INFERNO[low] * (1 - frac) + INFERNO[low + 1] * frac
    rgb = np.where(np.isnan(values)[..., None], np.array(BACKGROUND) / 255, rgb)
    return (rgb * 255).round().astype(np.uint8)


def scale_top(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return max(0.01, float(np.percentile(finite, PERCENTILE))) if finite.size else 1.0


def render_quicklook(change: ChangeMap, png: Path) -> Path:
    """Draw ``change`` into ``png`` (written as ``<png>.partial``, then published durably)."""
    bands, height, width = change.values.shape
    zoom = max(1, MAX_PANEL_SIDE // max(height, width))
    ph, pw = height * zoom, width * zoom
    top = scale_top(change.values)
    canvas_width = max(bands * pw + (bands + 1) * GAP, 480)
    canvas = Image.new(
        "RGB", (canvas_width, HEADER + ph + 3 * GAP + BAR_HEIGHT + 2 * TITLE_LINE + 4), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    reference = change.reference
    engine = reference.engine
    title = (f"cosine distance of patch embeddings from {reference.date} ({reference.label}); {height} x {width} "
             f"cells; {engine.get('model', 'clay-v0')} {engine.get('model_size')} engine ({engine.get('precision')}), "
             f"{engine.get('weights')}").translate(GLYPHLESS)  # fmt: skip
    for k, line in enumerate(title_lines(title, canvas.width - 2 * GAP, draw.textlength)):
        draw.text((GAP, 4 + k * TITLE_LINE), line, fill=(255, 255, 255))
    for k in range(bands):
        x = GAP + k * (pw + GAP)
        image = Image.fromarray(colours(change.values[k], top)).resize((pw, ph), Image.NEAREST)
        canvas.paste(image, (x, HEADER))
        label = f"{change.others[k].date} ({change.others[k].label})".translate(GLYPHLESS)
        draw.text((x, HEADER - TITLE_LINE - 2), label, fill=(220, 220, 220))
    bar_top, bar_width = HEADER + ph + GAP, min(canvas.width - 2 * GAP, 320)
    ramp = colours(np.linspace(0, top, bar_width)[None, :].repeat(BAR_HEIGHT, 0), top)
    canvas.paste(Image.fromarray(ramp), (GAP, bar_top))
    below = bar_top + BAR_HEIGHT + 2
    draw.text((GAP, below), "0", fill=(220, 220, 220))
    draw.text((GAP + bar_width - draw.textlength(f"{top:.3g}"), below), f"{top:.3g}", fill=(220, 220, 220))
    note = f"scale: 0 to the 99th percentile of all dates ({top:.3g}); above it: top colour; grey: nodata"
    draw.text((GAP, below + TITLE_LINE), note.translate(GLYPHLESS), fill=(160, 160, 160))
    partial = partial_path(png)
    with naming(png):
        try:
            canvas.save(partial, format="PNG")
            return publish(partial, png)
        finally:
            partial.unlink(missing_ok=True)  # gone once published; else what a failed save left
