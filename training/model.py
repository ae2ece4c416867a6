"""The Clay v0 masked autoencoder: encoder, decoder and loss, as ``clay-v0-spec.md`` describes them.

Module and parameter names follow the published checkpoint (vit-pytorch 1.6.4 block layout), so a
published ``state_dict`` loads without any key renaming; see ``checkpoint.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from clay.runtime.bands import (
    BAND_GROUPS,
    BAND_MEANS,
    BAND_STDS,
    GRID_SIZE,
    GROUP_NAMES,
    PATCH_SIZE,
    bands_of_groups,
)
from einops import rearrange
from torch import Tensor, nn

from .sizes import ModelSize, get_size

AttentionKind = Literal["sdpa", "explicit", "onnxruntime"]
ATTENTION_KINDS: tuple[str, ...] = ("sdpa", "explicit", "onnxruntime")


# --- fixed encodings ------------------------------------------------------------------------------


def posemb_sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sin-cos table ``[grid*grid, dim]``, row-major cells, ``[sin x, cos x, sin y, cos y]``.

    Rounded through float16 because the release computed it in float16: a bit-faithful model must
    add the same (slightly coarse) values the published weights were trained with.
    """
    if dim % 4:
        raise ValueError("2-D sin-cos encoding needs a width divisible by 4")
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    q = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(q) / (q - 1)))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    table = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)
    return table.to(torch.float16).to(torch.float32)


def posemb_sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """1-D sin-cos table ``[length, dim]`` as ``[sin, cos]``, float16-rounded like the 2-D one."""
    if dim % 2:
        raise ValueError("1-D sin-cos encoding needs an even width")
    q = dim // 2
    omega = 1.0 / (temperature ** (torch.arange(q) / (q - 1)))
    n = torch.arange(length)[:, None] * omega[None, :]
    table = torch.cat((n.sin(), n.cos()), dim=1)
    return table.to(torch.float16).to(torch.float32)


def metadata_features(lonlat: Tensor, date: Tensor) -> tuple[Tensor, Tensor]:
    """Turn raw lon/lat degrees ``[B, 2]`` and year-month-day ``[B, 3]`` into Clay's inputs.

    Done inside the model (not in the data pipeline) so that the exported graph takes plain
    degrees and dates and every caller gets the cyclic encoding right.
    """
    radians = lonlat * (math.pi / 180)  # not deg2rad: ONNX has no such op
    lon, lat = radians[:, 0], radians[:, 1]
    latlon = torch.stack((torch.sin(lat), torch.atan2(torch.cos(lon), torch.sin(lon))), dim=1)
    periods = lonlat.new_tensor([18.0, 11.0, 30.0])
    origin = lonlat.new_tensor([2012.0, 1.0, 1.0])
    angles = 2 * math.pi * (date - origin) / periods
    time = torch.atan2(torch.cos(angles), torch.sin(angles))
    return latlon, time


# --- transformer (vit-pytorch 1.6.4 layout) -------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are computed in float32 whatever the compute type (a float16
    variance of raw-looking activations overflows), returning the input's type. In float32 it is
    exactly ``nn.LayerNorm``; parameter names are the same, so published weights load as they are."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class OrtMultiHeadAttention(torch.autograd.Function):
    """softmax(q kᵀ / √d) v over ``heads`` heads on ``[B, N, heads·d]`` tensors. Eagerly it is
    PyTorch's SDPA; traced to ONNX it is ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``
    kernel, which never writes the N × N score matrix out (ONNX Runtime only: TensorRT and other
    runtimes do not know the op)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        batch, tokens, inner = q.shape
        split = [t.reshape(batch, tokens, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(batch, tokens, inner)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())  # same shape and type as the query: lets the exporter infer shapes
        return out


class Attention(nn.Module):
    """Pre-norm multi-head self-attention; the kernel is chosen once, at construction.

    ``"sdpa"`` (default) is PyTorch's fused kernel. ``"explicit"`` writes softmax(q kᵀ) v out as the
    release did (the baseline users run today, and the portable ONNX graph): q is scaled first and
    the softmax runs in float32, so the same code is safe in float16. ``"onnxruntime"`` exports as
    ONNX Runtime's fused attention kernel (see :class:`OrtMultiHeadAttention`).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, attention: AttentionKind = "sdpa") -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {attention!r}; known: {', '.join(ATTENTION_KINDS)}")
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.attention = attention
        self.norm = LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim)) if project_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)  # each [B, N, heads·d]
        if self.attention == "onnxruntime":
            return self.to_out(OrtMultiHeadAttention.apply(q, k, v, self.heads))
        batch, tokens, inner = q.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
            out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, inner))


class FeedForward(nn.Module):
    """Pre-norm MLP with exact GELU. Index 3 is an empty slot where vit-pytorch has its dropout,
    so that the second linear layer is ``net.4`` as in the published checkpoint."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm blocks with residuals, then a final LayerNorm.

    The blocks compute in the type of their weights (float32, or float16 when an exporter halves
    the linear layers): the input is cast to it on the way in. The final LayerNorm and what follows
    (the chip embedding is a mean over thousands of tokens) stay in float32.
    """

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, attention: AttentionKind = "sdpa"
    ) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, attention), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.layers[0][0].to_qkv.weight.dtype)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x.float())


# --- encoder --------------------------------------------------------------------------------------


class PatchEmbedding(nn.Module):
    """One band group's 32×32 patches → tokens ``[B, 256, dim]`` (conv, row-major flatten, LayerNorm)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def group_channels(groups: Sequence[str]) -> dict[str, list[int]]:
    """For a cube holding only ``groups``' bands (spec order), each group's channel positions."""
    present = bands_of_groups(groups)
    return {g: [present.index(i) for i in BAND_GROUPS[g]] for g in groups}


def _group_encoding(pos: Tensor, band: Tensor, groups: Sequence[str]) -> Tensor:
    """Position + band-group encoding for the tokens of ``groups`` ``[G*L, D]``.

    Each group keeps the band encoding of its index among all six groups, so a subset of groups
    sees exactly the encodings the full model was trained with.
    """
    index = [GROUP_NAMES.index(g) for g in groups]
    n_tokens = pos.shape[0]
    return torch.cat(
        (pos.repeat(len(index), 1), band[index].repeat_interleave(n_tokens, dim=0)), dim=1
    )


class Encoder(nn.Module):
    """Clay v0 encoder. Input cubes are normalised and hold the bands of ``groups`` in spec order.

    This is the only encoder forward: training, the eager baselines and every exported graph run
    it (the exporter wraps it to fold the normalisation into the patch embedding).
    """

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: int, attention: AttentionKind = "sdpa"
    ) -> None:
        super().__init__()
        self.dim = dim
        self.shape = (dim, depth, heads, dim_head, mlp_ratio)
        self.patch_embedding = nn.ModuleDict(
            {g: PatchEmbedding(len(idx), dim) for g, idx in BAND_GROUPS.items()}
        )
        self.latlon_embedding = nn.Linear(2, dim)
        self.time_embedding = nn.Linear(3, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, dim * mlp_ratio, attention)
        self.register_buffer("pos_encoding", posemb_sincos_2d(GRID_SIZE, dim // 2), persistent=False)
        self.register_buffer(
            "band_encoding", posemb_sincos_1d(len(GROUP_NAMES), dim // 2), persistent=False
        )

    def with_attention(self, attention: AttentionKind) -> Encoder:
        """A copy with the same weights whose attention kernel is ``attention``."""
        with torch.random.fork_rng(devices=[]):  # its throw-away initialisation leaves the caller's RNG alone
            copy = Encoder(*self.shape, attention=attention)
        copy.load_state_dict(self.state_dict())
        copy.to(self.pos_encoding.device)
        return copy.train(self.training)

    def patch_tokens(self, cube: Tensor, groups: Sequence[str] = GROUP_NAMES) -> Tensor:
        """Patch tokens with their fixed encodings, group-major grid order ``[B, G*256, dim]``."""
        channels = group_channels(groups)
        tokens = torch.cat([self.patch_embedding[g](cube[:, channels[g]]) for g in groups], dim=1)
        return tokens + _group_encoding(self.pos_encoding, self.band_encoding, groups)

    def metadata_tokens(self, lonlat: Tensor, date: Tensor) -> Tensor:
        """The lat/lon and time tokens ``[B, 2, dim]`` (they get no position encoding)."""
        latlon, time = metadata_features(lonlat, date)
        return torch.stack((self.latlon_embedding(latlon), self.time_embedding(time)), dim=1)

    def forward(
        self, cube: Tensor, lonlat: Tensor, date: Tensor, groups: Sequence[str] = GROUP_NAMES
    ) -> Tensor:
        """Deterministic inference path: all tokens in grid order, no masking → ``[B, G*256+2, dim]``."""
        x = torch.cat((self.patch_tokens(cube, groups), self.metadata_tokens(lonlat, date)), dim=1)
        return self.transformer(x)

    def forward_masked(
        self,
        cube: Tensor,
        lonlat: Tensor,
        date: Tensor,
        unmasked: Tensor,
        groups: Sequence[str] = GROUP_NAMES,
    ) -> Tensor:
        """Training path: only the patch tokens at ``unmasked`` ``[B, K]`` plus the 2 metadata tokens."""
        tokens = self.patch_tokens(cube, groups)
        kept = torch.gather(tokens, 1, unmasked[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.transformer(torch.cat((kept, self.metadata_tokens(lonlat, date)), dim=1))

    def embed(
        self,
        cube: Tensor,
        lonlat: Tensor,
        date: Tensor,
        groups: Sequence[str] = GROUP_NAMES,
        patch_embeddings: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Chip embedding ``[B, dim]`` (mean of the patch tokens, metadata excluded) and, on
        request, per-patch embeddings ``[B, G, 16, 16, dim]``."""
        patches = self.forward(cube, lonlat, date, groups)[:, :-2]
        chip = patches.mean(dim=1)
        if not patch_embeddings:
            return chip, None
        grid = patches.reshape(patches.shape[0], len(groups), GRID_SIZE, GRID_SIZE, patches.shape[-1])
        return chip, grid


# --- decoder and loss -----------------------------------------------------------------------------


class Decoder(nn.Module):
    """Rebuilds every patch from the encoder's kept tokens (training only)."""

    def __init__(
        self, enc_dim: int, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: int
    ) -> None:
        super().__init__()
        self.enc_to_dec = nn.Linear(enc_dim, dim) if enc_dim != dim else nn.Identity()
        self.mask_patch = nn.Parameter(torch.randn(dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, dim * mlp_ratio)
        self.embed_to_pixels = nn.ModuleDict(
            {g: nn.Linear(dim, PATCH_SIZE * PATCH_SIZE * len(idx)) for g, idx in BAND_GROUPS.items()}
        )
        self.register_buffer("pos_encoding", posemb_sincos_2d(GRID_SIZE, dim // 2), persistent=False)
        self.register_buffer(
            "band_encoding", posemb_sincos_1d(len(GROUP_NAMES), dim // 2), persistent=False
        )

    def forward(
        self, encoded: Tensor, unmasked: Tensor, groups: Sequence[str] = GROUP_NAMES
    ) -> Tensor:
        """Encoder output ``[B, K+2, enc_dim]`` → pixels ``[B, C, 256, 1024]``, channels in group order."""
        x = self.enc_to_dec(encoded)
        kept, meta = x[:, :-2], x[:, -2:]
        batch, dim = x.shape[0], x.shape[-1]
        n_tokens = len(groups) * GRID_SIZE * GRID_SIZE
        full = self.mask_patch.to(x.dtype).expand(batch, n_tokens, dim)
        full = full.scatter(1, unmasked[..., None].expand(-1, -1, dim), kept)
        full = full + _group_encoding(self.pos_encoding, self.band_encoding, groups)
        x = self.transformer(torch.cat((full, meta), dim=1))[:, :-2]
        per_group = rearrange(x, "b (g l) d -> g b l d", g=len(groups))
        pixels = [
            rearrange(self.embed_to_pixels[g](t), "b l (pp c) -> b c l pp", pp=PATCH_SIZE * PATCH_SIZE)
            for g, t in zip(groups, per_group)
        ]
        return torch.cat(pixels, dim=1)


def patchify_in_group_order(cube: Tensor, groups: Sequence[str] = GROUP_NAMES) -> Tensor:
    """Normalised cube → target patches ``[B, C, 256, 1024]`` with channels in group order,
    matching the decoder's output channel for channel."""
    channels = group_channels(groups)
    order = [c for g in groups for c in channels[g]]
    return rearrange(
        cube[:, order], "b c (h p1) (w p2) -> b c (h w) (p1 p2)", p1=PATCH_SIZE, p2=PATCH_SIZE
    )


def masked_patch_loss(
    cube: Tensor, pixels: Tensor, mask: Tensor, groups: Sequence[str] = GROUP_NAMES
) -> Tensor:
    """Per-pixel MSE, mean over each patch's pixels, then over a group's channels, summed over the
    masked patches and divided by their count. ``mask`` is ``[B, G*256]`` with 1 where masked (and,
    for chips padded from a smaller image, 0 on patches of padding: nothing to learn there)."""
    error = (patchify_in_group_order(cube, groups) - pixels.float()).pow(2).mean(dim=-1)  # [B, C, L]
    sizes = [len(BAND_GROUPS[g]) for g in groups]
    per_group = [part.mean(dim=1) for part in torch.split(error, sizes, dim=1)]  # G × [B, L]
    per_patch = torch.cat(per_group, dim=1)  # [B, G*L]
    return (per_patch * mask).sum() / mask.sum()


def random_masking(
    batch: int, n_tokens: int, ratio: float, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """Per-sample random split of token indices → (unmasked ``[B, K]``, mask ``[B, N]``, 1 = masked)."""
    noise = torch.rand(batch, n_tokens, generator=generator, device=device)
    order = torch.argsort(noise, dim=1)
    n_masked = int(ratio * n_tokens)
    mask = torch.zeros(batch, n_tokens, device=device)
    mask.scatter_(1, order[:, :n_masked], 1.0)
    return order[:, n_masked:], mask


class ClayMAE(nn.Module):
    """Encoder + decoder + loss. ``ClayMAE(size).encoder`` is what gets exported."""

    def __init__(self, size: str | ModelSize = "small", mask_ratio: float = 0.75, attention: AttentionKind = "sdpa") -> None:
        super().__init__()
        self.size = get_size(size) if isinstance(size, str) else size
        s = self.size
        self.mask_ratio = mask_ratio
        self.encoder = Encoder(s.dim, s.depth, s.heads, s.dim_head, s.mlp_ratio, attention)
        self.decoder = Decoder(
            s.dim, s.decoder_dim, s.decoder_depth, s.decoder_heads, s.decoder_dim_head, s.decoder_mlp_ratio
        )

    def forward(
        self,
        cube: Tensor,
        lonlat: Tensor,
        date: Tensor,
        groups: Sequence[str] = GROUP_NAMES,
        generator: torch.Generator | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masked reconstruction → (loss, pixels ``[B, C, 256, 1024]``, mask ``[B, G*256]``).

        ``valid`` ``[B, 256]`` (1 = the patch holds real pixels) keeps padding out of the loss; the
        encoder still sees the padded patches, as it does when the runtime pads a small scene."""
        n_tokens = len(groups) * GRID_SIZE * GRID_SIZE
        unmasked, mask = random_masking(cube.shape[0], n_tokens, self.mask_ratio, generator, cube.device)
        encoded = self.encoder.forward_masked(cube, lonlat, date, unmasked, groups)
        pixels = self.decoder(encoded, unmasked, groups)
        scored = mask if valid is None else mask * valid.to(mask.dtype).repeat(1, len(groups))
        return masked_patch_loss(cube, pixels, scored, groups), pixels, mask


def random_clay_mae(size: str, seed: int = 0) -> ClayMAE:
    """A randomly initialised model, the same for the same seed (for speed tests: speed does not
    depend on training). The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ClayMAE(size).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def normalise(cube: Tensor, band_indices: Sequence[int] | None = None) -> Tensor:
    """``(x - mean) / std`` per band; ``band_indices`` says which of the 13 bands ``cube`` holds."""
    idx = list(range(len(BAND_MEANS))) if band_indices is None else list(band_indices)
    mean = cube.new_tensor([BAND_MEANS[i] for i in idx])[None, :, None, None]
    std = cube.new_tensor([BAND_STDS[i] for i in idx])[None, :, None, None]
    return (cube - mean) / std
