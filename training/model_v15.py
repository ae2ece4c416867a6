"""The Clay v1.5 encoder, for inference: our implementation of what ``claymodel`` 1.5.0 computes.

Source of truth: ``claymodel/model.py`` (``Encoder``), ``claymodel/factory.py`` (``DynamicEmbedding``,
``WavesTransformer``, ``FCBlock``), ``claymodel/backbone.py`` (``Transformer``), ``claymodel/utils.py``
(sin-cos tables) and ``claymodel/finetune/embedder/factory.py`` (``EmbeddingEncoder``: the encoder
without masking, CLS token as the chip embedding) of Clay-foundation/model. Parameter names follow
that code, so the ``model.encoder.*`` tensors of the published checkpoint load without renaming
(``checkpoint_v15.py``); ``tests/test_model_v15.py`` checks parity with the official classes.

Differences from Clay v0 (``model.py``): one set of patch tokens whatever the bands (the patch
embedding's weights are made from the bands' wavelengths), patch 8 on 256-px chips, a CLS token, the
position encoding scaled by the gsd and computed in float32 (v0 rounded through float16), the time
and location values added to the last 8 channels of every patch token (v0 appended two tokens), an
attention output projection without bias and no dropout slot in the MLP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import ATTENTION_KINDS, AttentionKind, LayerNorm, OrtMultiHeadAttention
from .sizes import V15_SIZES, V15Size

PATCH_SIZE = 8  # clay_v1.5 config (model.patch_size) and the embedder's EmbeddingEncoder(patch_size=8)
CHIP_SIZE = 256  # v1.5 was trained on 256 × 256 chips (stacchip chip_size, embedder img_size default)
WAVE_DIM = 128  # DynamicEmbedding(wave_dim=128, num_latent_tokens=128) in model.py's Encoder
LATENT_TOKENS = 128
WEIGHT_SCALE = 0.02  # factory.py: F.conv2d(batch, dynamic_weight * 0.02, ...)
N_METADATA = 8  # [week sin/cos, hour sin/cos, 4 location values]: add_encodings' time_latlon


# --- fixed encodings (claymodel/utils.py, float32 like the original) ------------------------------


def posemb_sincos_1d(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``[N] → [N, dim]`` as ``[sin, cos]`` of ``values · ω``, ω = temperature^(−i/(dim/2 − 1))."""
    omega = torch.arange(dim // 2, dtype=torch.float32) / (dim // 2 - 1)
    omega = 1.0 / (temperature**omega)
    scaled = values.float()[:, None] * omega[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)


def posemb_sincos_2d_with_gsd(grid: int, dim: int, gsd: float, temperature: float = 10000.0) -> Tensor:
    """``[grid², dim]`` row-major ``[sin x, cos x, sin y, cos y]`` with ω = gsd / temperature^(2i/(dim/4−1)/dim).

    The exponent carries an extra ``2/dim`` (``utils.posemb_sincos_2d_with_gsd``): kept as trained.
    Computed in float32 in the same operation order as the original, so that large arguments
    (MODIS: gsd 500 × 31 cells) round the same way.
    """
    if dim % 4:
        raise ValueError("2-D sin-cos encoding needs a width divisible by 4")
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = torch.arange(dim // 4) / (dim // 4 - 1)
    omega = 1.0 / (temperature ** (2 * omega / dim)) * (torch.tensor(gsd, dtype=torch.float32) / 1.0)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


# --- dynamic patch embedding (claymodel/factory.py) ----------------------------------------------


class FCBlock(nn.Module):
    """Residual two-layer GELU MLP on the wavelength encodings."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """One post-norm transformer layer over [128 latent tokens, one token per band, a bias token];
    each band's output (+ its input) becomes its ``patch² · dim`` kernel, the bias token the bias."""

    def __init__(self, wave_dim: int, output_dim: int, latent_tokens: int, embed_dim: int) -> None:
        super().__init__()
        self.latent_tokens = latent_tokens
        layer = nn.TransformerEncoderLayer(
            d_model=wave_dim, nhead=4, activation="gelu", dropout=0.0, norm_first=False, batch_first=True
        )
        # enable_nested_tensor off: a warning otherwise, and no effect on a single unbatched sequence
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wave_dim, output_dim)
        self.fc_bias = nn.Linear(wave_dim, embed_dim)
        self.weight_tokens = nn.Parameter(torch.zeros(latent_tokens, wave_dim))
        self.bias_token = nn.Parameter(torch.zeros(1, wave_dim))

    def forward(self, waves: Tensor) -> tuple[Tensor, Tensor]:
        """``[C, wave_dim]`` → weights ``[C, patch²·dim]``, bias ``[dim]``."""
        x = torch.cat([self.weight_tokens, waves, self.bias_token], dim=0)
        out = self.encoder(x)
        weights = self.fc_weight(out[self.latent_tokens : -1] + x[self.latent_tokens : -1])
        return weights, self.fc_bias(out[-1])


class DynamicEmbedding(nn.Module):
    """DOFA-style patch embedding: the bands' wavelengths (µm) make the convolution that embeds them."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.weight_generator = WavesTransformer(WAVE_DIM, patch_size**2 * embed_dim, LATENT_TOKENS, embed_dim)
        self.fclayer = FCBlock(WAVE_DIM)

    def kernel(self, wavelengths: Sequence[float] | Tensor) -> tuple[Tensor, Tensor]:
        """The convolution for bands of these wavelengths: weight ``[dim, C, p, p]`` (the 0.02 scale
        applied) and bias ``[dim]``. A constant per sensor: the exporter folds it."""
        waves = torch.as_tensor(wavelengths, dtype=torch.float32)
        encoded = self.fclayer(posemb_sincos_1d(waves, WAVE_DIM).to(self.fclayer.l1.weight.device))
        weight, bias = self.weight_generator(encoded)
        p = self.patch_size
        # factory.py: rearrange(weight, "cin (cout k1 k2) -> cout cin k1 k2")
        weight = weight.reshape(len(waves), self.embed_dim, p, p).transpose(0, 1)
        return weight * WEIGHT_SCALE, bias

    def forward(self, cube: Tensor, wavelengths: Sequence[float] | Tensor) -> Tensor:
        """Normalised ``[B, C, H, W]`` → patch tokens ``[B, (H/p)·(W/p), dim]``, row-major."""
        weight, bias = self.kernel(wavelengths)
        return F.conv2d(cube, weight, bias, stride=self.patch_size).flatten(2).transpose(1, 2)


# --- transformer (claymodel/backbone.py) ---------------------------------------------------------


class Attention(nn.Module):
    """Pre-norm multi-head self-attention, output projection without bias.

    ``attention`` picks the kernel as in v0's ``model.Attention``: ``"sdpa"`` (default; the official
    ``fused_attn=True``), ``"explicit"`` (softmax(q kᵀ/√d) v written out, softmax in float32: the
    portable ONNX graph) or ``"onnxruntime"`` (ONNX Runtime's fused MultiHeadAttention when exported).
    LayerNorms compute their statistics in float32 (v0's :class:`LayerNorm`, = ``nn.LayerNorm`` in fp32).
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.attention: AttentionKind = "sdpa"
        self.norm = LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        if self.attention == "onnxruntime":
            return self.to_out(OrtMultiHeadAttention.apply(q, k, v, self.heads))
        batch, tokens, _ = x.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
            out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))


def set_attention(module: nn.Module, attention: AttentionKind) -> None:
    """Switch every v1.5 attention layer in ``module`` to the ``attention`` kernel (same weights)."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {attention!r}; known: {', '.join(ATTENTION_KINDS)}")
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.attention = attention


class FeedForward(nn.Module):
    """Pre-norm MLP, exact GELU; ``net.3`` is the second linear layer (no dropout slot, unlike v0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm blocks with residuals, then a final LayerNorm. The blocks compute in the
    type of their weights (an exporter may halve the linear layers); the final norm in float32."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.layers[0][0].to_qkv.weight.dtype)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x.float())


# --- encoder ---------------------------------------------------------------------------------------


class EncoderV15(nn.Module):
    """Clay v1.5 encoder without masking (the embedder's ``EmbeddingEncoder``)."""

    def __init__(self, size: V15Size | str = "large") -> None:
        super().__init__()
        self.size = V15_SIZES[size] if isinstance(size, str) else size
        s = self.size
        self.dim = s.dim
        self.patch_size = PATCH_SIZE
        self.cls_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.patch_embedding = DynamicEmbedding(PATCH_SIZE, s.dim)
        self.transformer = Transformer(s.dim, s.depth, s.heads, s.dim_head, int(s.dim * s.mlp_ratio))

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(dim, depth, heads, dim_head, mlp_ratio), as v0's ``Encoder.shape`` (the CUDA builder reads it)."""
        s = self.size
        return (s.dim, s.depth, s.heads, s.dim_head, s.mlp_ratio)

    def position_encoding(self, grid: int, gsd: float) -> Tensor:
        """``[grid², dim − 8]``: the gsd-scaled sin-cos table of the patch tokens' first channels."""
        return posemb_sincos_2d_with_gsd(grid, self.dim - N_METADATA, gsd).to(self.cls_token.device)

    def encode_tokens(self, patches: Tensor, metadata: Tensor, position: Tensor) -> Tensor:
        """Patch tokens ``[B, L, dim]`` + ``[position | metadata]`` → transformer output ``[B, 1+L, dim]``
        (CLS first). ``metadata`` ``[B, 8]`` is added to every token's last 8 channels."""
        batch, tokens, _ = patches.shape
        encoding = torch.cat((position.expand(batch, tokens, -1), metadata[:, None, :].expand(-1, tokens, -1)), dim=-1)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), patches + encoding), dim=1)
        return self.transformer(x)

    def forward(
        self, cube: Tensor, time: Tensor, latlon: Tensor, wavelengths: Sequence[float] | Tensor, gsd: float
    ) -> Tensor:
        """Official inputs → all tokens ``[B, 1 + L, dim]``.

        ``cube [B, C, H, W]`` normalised pixels, H = W a multiple of 8; ``time [B, 4]`` (week sin/cos,
        hour sin/cos) and ``latlon [B, 4]`` as the official ``datacube`` holds them;
        ``wavelengths`` µm per channel; ``gsd`` metres.
        """
        patches = self.patch_embedding(cube, wavelengths)
        grid = math.isqrt(patches.shape[1])
        return self.encode_tokens(patches, torch.cat((time, latlon), dim=1), self.position_encoding(grid, gsd))

    def embed(self, cube: Tensor, time: Tensor, latlon: Tensor, wavelengths, gsd: float) -> Tensor:
        """The chip embedding ``[B, dim]``: the CLS token (``EmbeddingEncoder.forward``)."""
        return self.forward(cube, time, latlon, wavelengths, gsd)[:, 0]


def random_encoder_v15(size: str, seed: int = 0) -> EncoderV15:
    """A randomly initialised encoder (speed tests and the tests' fixtures), caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = EncoderV15(size)
        # the zero-initialised tokens get the official initial scale (model.py, factory.py: randn · 0.02)
        for token in (encoder.cls_token, encoder.patch_embedding.weight_generator.weight_tokens,
                      encoder.patch_embedding.weight_generator.bias_token):
            nn.init.normal_(token, std=0.02)
        return encoder.eval()
