"""The inference graph that gets exported: raw pixels, degrees and dates in; embeddings out.

It differs from the training encoder in three ways, none of which changes the numbers:
- the per-band normalisation is folded into each group's patch-embedding convolution
  (w' = w / std, b' = b − Σ w · mean / std), so the graph takes raw physical values;
- the lat/lon and date encodings are computed inside the graph, from degrees and Y-M-D;
- it can run the transformer in float16 (``half=True``) with the parts that overflow or lose
  precision kept in float32: the patch embedding and its LayerNorm (raw S2 DNs reach 65535, more
  than float16 holds), every LayerNorm's statistics, the softmax, and the final mean. Tracing this
  module gives the mixed-precision graph that TensorRT's strongly typed mode builds as FP16.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clay.training.bands import BAND_MEANS, BAND_STDS, GRID_SIZE, GROUP_NAMES, PATCH_SIZE, bands_of_groups
from clay.training.model import Encoder, _group_encoding, group_channels, metadata_features


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


class OrtMultiHeadAttention(torch.autograd.Function):
    """Softmax(q kᵀ / √d) v over ``heads`` heads, exported as ONNX Runtime's fused
    ``com.microsoft.MultiHeadAttention``: one kernel that never writes the N × N score matrix out,
    for the CPU artifact only (TensorRT and other runtimes do not know the op)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:  # [B, N, heads·d] each
        batch, tokens, inner = q.shape
        split = [t.reshape(batch, tokens, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(batch, tokens, inner)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())  # same shape and type as the query: lets the exporter infer shapes
        return out


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
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        self.groups = tuple(groups)
        self.fused_attention = fused_attention
        self.with_patches = patch_embeddings
        self.dtype = torch.float16 if half else torch.float32
        bands = bands_of_groups(self.groups)
        channels = group_channels(self.groups)
        self.channels = {g: channels[g] for g in self.groups}
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        for g in self.groups:
            spec_bands = [bands[c] for c in channels[g]]
            self.convs[g] = fold_normalisation(
                encoder.patch_embedding[g].proj,
                [BAND_MEANS[b] for b in spec_bands],
                [BAND_STDS[b] for b in spec_bands],
            )
            self.norms[g] = copy.deepcopy(encoder.patch_embedding[g].norm)
        self.latlon_embedding = copy.deepcopy(encoder.latlon_embedding)
        self.time_embedding = copy.deepcopy(encoder.time_embedding)
        self.transformer = copy.deepcopy(encoder.transformer)
        if half:
            for module in self.transformer.modules():
                if isinstance(module, nn.Linear):
                    module.half()
        self.register_buffer(
            "encoding", _group_encoding(encoder.pos_encoding, encoder.band_encoding, self.groups), persistent=False
        )
        self.eval()

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("embedding", "patch_embeddings") if self.with_patches else ("embedding",)

    def forward(self, pixels: Tensor, lonlat: Tensor, date: Tensor) -> tuple[Tensor, ...]:
        tokens = torch.cat(
            [self.norms[g](self.convs[g](pixels[:, self.channels[g]]).flatten(2).transpose(1, 2)) for g in self.groups],
            dim=1,
        )
        tokens = tokens + self.encoding
        latlon, time = metadata_features(lonlat, date)
        meta = torch.stack((self.latlon_embedding(latlon), self.time_embedding(time)), dim=1)
        x = torch.cat((tokens, meta), dim=1).to(self.dtype)
        for attn, ff in self.transformer.layers:
            x = x + self._attention(attn, x)
            x = x + self._feed_forward(ff, x)
        patches = self._layer_norm(self.transformer.norm, x, torch.float32)[:, :-2]
        embedding = patches.mean(dim=1)
        if not self.with_patches:
            return (embedding,)
        grid = patches.reshape(patches.shape[0], len(self.groups), GRID_SIZE, GRID_SIZE, patches.shape[-1])
        return embedding, grid

    def _layer_norm(self, norm: nn.LayerNorm, x: Tensor, out_dtype: torch.dtype) -> Tensor:
        """LayerNorm with float32 statistics whatever the compute type."""
        return F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(out_dtype)

    def _attention(self, attn, x: Tensor) -> Tensor:
        h = self._layer_norm(attn.norm, x, self.dtype)
        if self.fused_attention:
            q, k, v = attn.to_qkv(h).chunk(3, dim=-1)
            return attn.to_out(OrtMultiHeadAttention.apply(q, k, v, attn.heads))
        batch, tokens, _ = h.shape
        qkv = attn.to_qkv(h).reshape(batch, tokens, 3, attn.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]  # scale q first: smaller float16 scores
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float(), dim=-1).to(self.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, tokens, -1)
        return attn.to_out(out)

    def _feed_forward(self, ff, x: Tensor) -> Tensor:
        norm, up, _, _, down = ff.net
        return down(F.gelu(up(self._layer_norm(norm, x, self.dtype))))
