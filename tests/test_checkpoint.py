"""Loading the published Clay v0 layout, proven against an independent vit-pytorch reference."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="checkpoint tests need the [training] extra")
from clay.runtime.bands import BAND_GROUPS, BAND_MEANS, BAND_STDS  # noqa: E402
from clay.training.checkpoint import CheckpointError, load_clay_mae  # noqa: E402
from clay.training.model import ClayMAE  # noqa: E402
from clay.training.sizes import SIZES  # noqa: E402
from clay.training.synthetic import make_chips  # noqa: E402
from torch import nn  # noqa: E402


def load_vit_pytorch_module():
    """vit-pytorch's ``vit.py`` by file path: its package ``__init__`` imports torchvision, which
    does not work beside the CPU torch build (and the project must not depend on it)."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vit-pytorch==1.6.4 is not installed (pip install --no-deps vit-pytorch==1.6.4)")
    path = Path(next(iter(spec.submodule_search_locations))) / "vit.py"
    module_spec = importlib.util.spec_from_file_location("vit_pytorch_vit_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sincos_reference(values: np.ndarray, width: int) -> np.ndarray:
    """``[sin(v·ω), cos(v·ω)]`` with ω_k = 10000^(−k/(q−1)), q = width/2, written from the spec."""
    q = width // 2
    omega = 10000.0 ** (-np.arange(q) / (q - 1))
    angles = values[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


class ReferenceEncoder(nn.Module):
    """Clay v0's encoder assembled from vit-pytorch's Transformer and a patch embedding written here
    from the spec, independent of ``clay.training.model``."""

    def __init__(self, vit, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: int) -> None:
        super().__init__()
        self.patch_embedding = nn.ModuleDict()
        for name, bands in BAND_GROUPS.items():
            group = nn.Module()
            group.proj = nn.Conv2d(len(bands), dim, 32, 32)
            group.norm = nn.LayerNorm(dim)
            self.patch_embedding[name] = group
        self.latlon_embedding = nn.Linear(2, dim)
        self.time_embedding = nn.Linear(3, dim)
        self.transformer = vit.Transformer(dim, depth, heads, dim_head, dim * mlp_ratio)
        half = dim // 2
        ys, xs = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
        pos = np.concatenate(
            [sincos_reference(xs.ravel().astype(float), half // 2), sincos_reference(ys.ravel().astype(float), half // 2)],
            axis=1,
        )
        band = sincos_reference(np.arange(6, dtype=float), half)
        pos16 = torch.from_numpy(pos.astype(np.float16).astype(np.float32))
        band16 = torch.from_numpy(band.astype(np.float16).astype(np.float32))
        self.register_buffer("encoding", torch.cat([torch.cat([pos16, band16[g].expand(256, -1)], 1) for g in range(6)]), persistent=False)

    def forward(self, raw: torch.Tensor, lonlat: torch.Tensor, date: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(BAND_MEANS)[None, :, None, None]
        std = torch.tensor(BAND_STDS)[None, :, None, None]
        cube = (raw - mean) / std
        tokens = []
        for name, bands in BAND_GROUPS.items():
            group = self.patch_embedding[name]
            grid = group.proj(cube[:, list(bands)])  # [B, D, 16, 16]
            tokens.append(group.norm(grid.flatten(2).transpose(1, 2)))
        x = torch.cat(tokens, dim=1) + self.encoding
        lon, lat = lonlat[:, 0] * math.pi / 180, lonlat[:, 1] * math.pi / 180
        latlon = torch.stack([torch.sin(lat), torch.atan2(torch.cos(lon), torch.sin(lon))], 1)
        r = torch.stack([(date[:, 0] - 2012) / 18, (date[:, 1] - 1) / 11, (date[:, 2] - 1) / 30], 1) * 2 * math.pi
        time = torch.atan2(torch.cos(r), torch.sin(r))
        meta = torch.stack([self.latlon_embedding(latlon), self.time_embedding(time)], 1)
        out = self.transformer(torch.cat([x, meta], dim=1))
        return out[:, :-2].mean(dim=1)


def published_layout_checkpoint(tmp_path: Path, size: str = "tiny"):
    """A Lightning-style checkpoint of a reference encoder (+ a decoder), keys prefixed ``model.``."""
    vit = load_vit_pytorch_module()
    s = SIZES[size]
    torch.manual_seed(1)
    reference = ReferenceEncoder(vit, s.dim, s.depth, s.heads, s.dim_head, s.mlp_ratio).eval()
    for p in reference.parameters():  # non-trivial LayerNorm affine parameters too
        nn.init.normal_(p, std=0.05 if p.ndim > 1 else 0.2)
    decoder = ClayMAE(size).decoder
    state = {f"model.encoder.{k}": v for k, v in reference.state_dict().items()}
    state |= {f"model.decoder.{k}": v for k, v in decoder.state_dict().items()}
    path = tmp_path / "clay-v0-like.ckpt"
    torch.save({"epoch": 24, "global_step": 1, "state_dict": state, "hyper_parameters": {"lr": 1e-4}}, path)
    return path, reference, state


def test_published_layout_loads_and_matches_the_vit_pytorch_reference(tmp_path):
    path, reference, _ = published_layout_checkpoint(tmp_path)
    model = load_clay_mae(path)
    assert model.size.name == "tiny"
    raw, lonlat, date = (torch.from_numpy(a) for a in make_chips(3, seed=5))
    from clay.training.model import normalise

    with torch.no_grad():
        expected = reference(raw, lonlat, date)
        ours, _ = model.encoder.embed(normalise(raw), lonlat, date)
    assert (ours - expected).abs().max().item() <= 1e-5
    assert expected.std().item() > 0.1  # the comparison is not between two near-constant vectors


def test_bare_state_dict_and_own_checkpoint_load(tmp_path):
    _, _, state = published_layout_checkpoint(tmp_path)
    bare = tmp_path / "bare.pt"
    torch.save({k.removeprefix("model."): v for k, v in state.items()}, bare)
    assert load_clay_mae(bare, size="tiny").size.name == "tiny"


def test_size_mismatch_is_one_clear_error(tmp_path):
    path, _, _ = published_layout_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"--size small was asked for, but the weights are 'tiny'"):
        load_clay_mae(path, size="small")


def test_missing_and_misshaped_keys_are_named(tmp_path):
    _, _, state = published_layout_checkpoint(tmp_path)
    broken = dict(state)
    del broken["model.encoder.transformer.layers.1.0.to_qkv.weight"]
    broken["model.encoder.time_embedding.weight"] = torch.zeros(256, 4)
    broken["model.encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError) as info:
        load_clay_mae(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "1 missing: encoder.transformer.layers.1.0.to_qkv.weight" in message
    assert "1 unexpected: encoder.extra.weight" in message
    assert "encoder.time_embedding.weight (256, 4)≠(256, 3)" in message
    assert "\n" not in message


def test_not_a_checkpoint_is_one_clear_error(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_clay_mae(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_clay_mae(tmp_path / "absent.ckpt")
