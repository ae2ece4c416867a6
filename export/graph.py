"""The inference graph that gets exported: raw pixels, degrees and dates in; embeddings out.

It is the training encoder's own forward (``Encoder.embed``), wrapped for export in three ways,
none of which changes the numbers:
- the per-band normalisation is folded into each group's patch-embedding convolution
  (w' = w / std, b' = b − Σ w · mean / std), so the graph takes raw physical values;
- the attention kernel is chosen for the target (``explicit`` for the portable graphs,
  ``onnxruntime`` for ONNX Runtime's fused kernel);
- with ``half=True`` the transformer's linear layers are float16, so the blocks compute in float16
  while the model keeps float32 where float16 would overflow or lose precision (patch embedding on
  raw S2 DNs up to 65535, LayerNorm statistics, softmax, the final LayerNorm and mean). Tracing it
  gives the mixed-precision graph that TensorRT's strongly typed mode builds as FP16.
The lat/lon and date encodings are the model's own, computed in the graph from degrees and Y-M-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from clay.runtime.bands import BAND_MEANS, BAND_STDS, GROUP_NAMES, PATCH_SIZE, bands_of_groups
from clay.training.model import AttentionKind, Encoder, group_channels
from torch import Tensor, nn


def fold_normalisation(conv: nn.Conv2d, means: Sequence[float], stds: Sequence[float]) -> nn.Conv2d:
    """A convolution on raw values equal to ``conv`` on ``(x − mean) / std`` (computed in float64)."""
    weight = conv.weight.detach().double()
    mean = torch.tensor(means, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(stds, dtype=torch.float64)[None, :, None, None]
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, PATCH_SIZE, PATCH_SIZE)
    with torch.no_grad():
        folded.weight.copy_((weight / std).float())
        folded.bias.copy_((conv.bias.detach().double() - (weight * mean / std).sum(dim=(1, 2, 3))).float())
    return folded


class InferenceEncoder(nn.Module):
    """Exportable Clay encoder for a set of band groups (all six by default).

    Inputs: ``pixels [B, C, 512, 512]`` raw values of the groups' bands in spec order, ``lonlat
    [B, 2]`` degrees, ``date [B, 3]`` year, month, day. Outputs: ``embedding [B, dim]`` and, with
    ``patch_embeddings``, ``patch_embeddings [B, G, 16, 16, dim]``.
    """

    def __init__(
        self,
        encoder: Encoder,
        groups: Sequence[str] = GROUP_NAMES,
        patch_embeddings: bool = False,
        half: bool = False,
        attention: AttentionKind = "explicit",
    ) -> None:
        super().__init__()
        self.groups = tuple(groups)
        self.attention = attention
        self.with_patches = patch_embeddings
        self.encoder = encoder.with_attention(attention)
        bands = bands_of_groups(self.groups)
        for group, channels in group_channels(self.groups).items():
            spec_bands = [bands[c] for c in channels]
            embedding = self.encoder.patch_embedding[group]
            embedding.proj = fold_normalisation(
                embedding.proj, [BAND_MEANS[b] for b in spec_bands], [BAND_STDS[b] for b in spec_bands]
            )
        if half:
            for module in self.encoder.transformer.modules():
                if isinstance(module, nn.Linear):
                    module.half()
        self.eval()

    @property
    def channels(self) -> int:
        return len(bands_of_groups(self.groups))

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("embedding", "patch_embeddings") if self.with_patches else ("embedding",)

    def forward(self, pixels: Tensor, lonlat: Tensor, date: Tensor) -> tuple[Tensor, ...]:
        chip, grid = self.encoder.embed(pixels, lonlat, date, self.groups, self.with_patches)
        return (chip,) if grid is None else (chip, grid)
