"""Shared fixtures: generated chips and scenes, small enough for a 2-core CI machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Small crops of the real samples, shipped with the tests (provenance and licences: its README and
#: each folder's NOTICE.md). The real Sentinel-2 scene T48QUE is the bundled demo copy.
REAL_DATA = Path(__file__).resolve().parent / "data" / "real"
SSL4EO = REAL_DATA / "ssl4eo-s12-0000200"

# Keep every test on the same thread count so timings and results do not depend on the machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def torch_threads():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


def trained_like_tiny(seed: int = 0):
    """A tiny model with non-trivial weights (LayerNorm affine included), closer to a trained one
    than a fresh initialisation whose LayerNorms are identities."""
    import torch
    from clay.training.model import ClayMAE

    torch.manual_seed(seed)
    model = ClayMAE("tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint in the published Lightning layout (``state_dict`` with ``model.`` prefix)."""
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    state = {f"model.{k}": v for k, v in trained_like_tiny().state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1, "hyper_parameters": {"size": "tiny"}}, path)
    return path


def run_module(module: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m module args`` in a fresh interpreter, as a user would run the command."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def masked_training_steps(model, cube, lonlat, date, generator, steps: int = 20, autocast: str | None = None):
    """``steps`` AdamW steps of the masked training loss (bf16 autocast on ``autocast``'s device if
    given); every loss must be finite. Returns the losses and the last step's (pixels, mask)."""
    import contextlib

    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    losses = []
    for _ in range(steps):
        context = torch.autocast(autocast, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            loss, pixels, mask = model(cube, lonlat, date, generator=generator)
        assert torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses, pixels, mask
