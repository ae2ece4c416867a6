"""The exported Clay v1.5 graph for one sensor: raw pixels, lon/lat degrees and Y-M-D dates in, as the
v0 artifacts take them (one runtime contract); CLS embedding (and patch tokens) out.

Folded per sensor at export (constants of a sensor, computed once in float32/float64 here):
- the wavelength transformer's output, i.e. the patch-embedding convolution for the sensor's bands
  (``DynamicEmbedding.kernel``), with the sensor's normalisation folded into it
  (w' = w / std, b' = b − Σ w · mean / std, in float64 as for v0);
- the gsd-scaled position table (the sensor's metadata.yaml gsd: the training convention);
- Sentinel-1: the linear-power → dB conversion of the training data module stays in the graph, before
  the (folded) normalisation, so the input is linear power as for v0.
Computed in the graph from the inputs: the 8 metadata values (ISO week and noon as sin/cos, location
as sin/cos in the convention's order; :func:`clay.runtime.sensors.metadata_values` is the reference).
"""

from __future__ import annotations

import copy
import math

import torch
from clay.runtime.sensors import NOON, SAR_DB, SAR_FLOOR, Sensor
from clay.training.model_v15 import EncoderV15, set_attention
from torch import Tensor, nn

# Days before each month in a common year (the day-of-year of the 1st of month m is _CUM[m-1] + 1).
_CUM_DAYS = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _mod(x: Tensor, m: float) -> Tensor:
    """Floor modulo written out (x − m·⌊x/m⌋): the same ONNX ops on every runtime, exact on the
    small integers (< 2^24) it is used on here."""
    return x - m * torch.floor(x / m)


def _jan1_weekday(year: Tensor) -> Tensor:
    """Weekday of 1 January of ``year``, 0 = Monday … 6 = Sunday (Gauss's algorithm, shifted)."""
    y = year - 1
    sunday0 = _mod(1 + 5 * _mod(y, 4) + 4 * _mod(y, 100) + 6 * _mod(y, 400), 7)
    return _mod(sunday0 + 6, 7)


def _is_leap(year: Tensor) -> Tensor:
    return ((_mod(year, 4) == 0) & (_mod(year, 100) != 0)) | (_mod(year, 400) == 0)


def _weeks_in(year: Tensor) -> Tensor:
    """52 or 53: a year has 53 ISO weeks when it starts on a Thursday, or on a Wednesday in a leap year."""
    jan1 = _jan1_weekday(year)
    long_year = (jan1 == 3) | ((jan1 == 2) & _is_leap(year))
    return torch.where(long_year, torch.full_like(year, 53.0), torch.full_like(year, 52.0))


def iso_week(date: Tensor) -> Tensor:
    """ISO 8601 week number ``[B]`` (float, 1…53) of dates ``[B, 3]`` (year, month, day), as Python's
    ``date.isocalendar()[1]`` that stacchip's ``normalize_timestamp`` uses."""
    year, month, day = date[:, 0], date[:, 1], date[:, 2]
    cum = torch.tensor(_CUM_DAYS, dtype=date.dtype, device=date.device)
    doy = cum[(month - 1).long()] + day + ((month > 2) & _is_leap(year)).to(date.dtype)
    weekday = _mod(_jan1_weekday(year) + doy - 1, 7) + 1  # 1 = Monday … 7 = Sunday
    week = torch.floor((doy - weekday + 10) / 7)
    week_1_of_next = torch.where(week > _weeks_in(year), torch.ones_like(week), week)  # late December
    return torch.where(week < 1, _weeks_in(year - 1), week_1_of_next)  # early January: the year before's last week


def metadata_features(lonlat: Tensor, date: Tensor, convention: str) -> Tensor:
    """``[B, 8]`` = [sin week, cos week, sin noon, cos noon, location ×4] (see ``metadata_values``)."""
    week = iso_week(date) * (2 * math.pi / 52)
    hour = torch.full_like(week, NOON * 2 * math.pi / 24)
    radians = lonlat * (math.pi / 180)
    lon, lat = radians[:, 0], radians[:, 1]
    lon_pair, lat_pair = (torch.sin(lon), torch.cos(lon)), (torch.sin(lat), torch.cos(lat))
    location = (*lon_pair, *lat_pair) if convention == "training" else (*lat_pair, *lon_pair)
    return torch.stack((torch.sin(week), torch.cos(week), torch.sin(hour), torch.cos(hour), *location), dim=1)


def folded_kernel(encoder: EncoderV15, sensor: Sensor) -> nn.Conv2d:
    """The sensor's patch-embedding convolution on raw values (dB for SAR): the wavelength
    transformer's kernel with the normalisation folded in, in float64."""
    with torch.no_grad():
        weight, bias = encoder.patch_embedding.kernel(sensor.wavelengths)
    weight, bias = weight.double(), bias.double()
    mean = torch.tensor(sensor.means, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(sensor.stds, dtype=torch.float64)[None, :, None, None]
    p = encoder.patch_size
    conv = nn.Conv2d(len(sensor.bands), encoder.dim, p, p)
    with torch.no_grad():
        conv.weight.copy_((weight / std).float())
        conv.bias.copy_((bias - (weight * mean / std).sum(dim=(1, 2, 3))).float())
    return conv


class InferenceEncoderV15(nn.Module):
    """Exportable Clay v1.5 encoder for one sensor and chip size.

    Inputs: ``pixels [B, C, S, S]`` raw values of the sensor's bands (``sensor.bands`` order; S1:
    linear power), ``lonlat [B, 2]`` degrees, ``date [B, 3]`` year, month, day. Outputs: ``embedding
    [B, dim]`` (the CLS token) and, with ``patch_embeddings``, ``patch_embeddings [B, 1, S/8, S/8, dim]``
    (one token group, kept for the runtime's ``[B, G, h, w, dim]`` contract).
    """

    def __init__(
        self,
        encoder: EncoderV15,
        sensor: Sensor,
        chip_size: int,
        convention: str = "training",
        patch_embeddings: bool = False,
        half: bool = False,
        attention: str = "explicit",
    ) -> None:
        super().__init__()
        if chip_size % encoder.patch_size:
            raise ValueError(f"chip size {chip_size} is not a multiple of the patch size {encoder.patch_size}")
        self.sensor = sensor
        self.chip_size = chip_size
        self.grid = chip_size // encoder.patch_size
        self.convention = convention
        self.attention = attention
        self.with_patches = patch_embeddings
        self.sar_db = sensor.name in SAR_DB
        self.encoder = copy.deepcopy(encoder)
        set_attention(self.encoder, attention)
        self.conv = folded_kernel(encoder, sensor)
        self.encoder.patch_embedding = None  # folded into self.conv: not part of the graph
        self.register_buffer("position", encoder.position_encoding(self.grid, sensor.gsd).cpu(), persistent=False)
        if half:
            for module in self.encoder.transformer.modules():
                if isinstance(module, nn.Linear):
                    module.half()
        self.eval()

    @property
    def channels(self) -> int:
        return len(self.sensor.bands)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("embedding", "patch_embeddings") if self.with_patches else ("embedding",)

    def forward(self, pixels: Tensor, lonlat: Tensor, date: Tensor) -> tuple[Tensor, ...]:
        if self.sar_db:  # datamodule.py: values ≤ 0 become 1e-10, then 10·log10
            pixels = 10 * torch.log10(torch.where(pixels > 0, pixels, torch.full_like(pixels, SAR_FLOOR)))
        patches = self.conv(pixels).flatten(2).transpose(1, 2)
        tokens = self.encoder.encode_tokens(patches, metadata_features(lonlat, date, self.convention), self.position)
        chip = tokens[:, 0]
        if not self.with_patches:
            return (chip,)
        grid = tokens[:, 1:].reshape(tokens.shape[0], 1, self.grid, self.grid, tokens.shape[-1])
        return chip, grid
