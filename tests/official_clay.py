"""The official Clay v1.5 code (``claymodel`` 1.5.0 from PyPI, installed with ``--no-deps``), importable
in the tests only.

The 1.5.0 wheel installs its modules at the top of site-packages (``model.py``, ``factory.py``, ...)
and they import each other as ``src.*``; ``model.py`` also imports ``timm`` (the training teacher)
and ``torchvision`` (the teacher's resize), neither of which the encoder uses and neither of which
imports beside the CPU torch build. So the files are loaded here by path under the names they expect,
with ``timm`` and ``torchvision.transforms.v2`` stubbed in ``sys.modules`` for the duration of the
import only. The stubbed ``timm.create_model`` returns a small stand-in teacher with DINOv2-like
parameter names, so that ``ClayMAE`` builds and its checkpoint has the published layout (encoder,
decoder, proj, teacher). Nothing of this is product code.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

TEACHER_FEATURES = 1024  # DINOv2 ViT-L's width: model.proj maps the encoder's CLS token to it


def _fake_teacher(*args, **kwargs):
    import torch
    from torch import nn

    class FakeTeacher(nn.Module):
        num_features = TEACHER_FEATURES

        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.reg_token = nn.Parameter(torch.zeros(1, 4, 8))
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(3, 8, 14, 14)
            self.norm = nn.LayerNorm(8)

    return FakeTeacher()


def load_official() -> types.SimpleNamespace:
    """The official modules as a namespace: ``model`` (``Encoder``, ``ClayMAE``, ``clay_mae_tiny``),
    ``factory``, ``backbone``, ``utils``. Skips the test when claymodel 1.5.0 is not installed."""
    if "clay_official.model" in sys.modules:
        return sys.modules["clay_official"].namespace
    try:
        dist = distribution("claymodel")
    except PackageNotFoundError:
        pytest.skip("claymodel==1.5.0 is not installed (pip install --no-deps claymodel==1.5.0)")
    if dist.version != "1.5.0":
        pytest.skip(f"claymodel {dist.version} is installed; the parity tests are written against 1.5.0")
    import torch

    root = Path(dist.locate_file("model.py"))
    if not root.is_file():
        pytest.skip(f"claymodel 1.5.0's model.py is not at {root}")
    stubs = {
        "timm": types.SimpleNamespace(create_model=_fake_teacher),
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.transforms": types.ModuleType("torchvision.transforms"),
        "torchvision.transforms.v2": types.SimpleNamespace(Resize=lambda size: None),
    }
    saved = {name: sys.modules.get(name) for name in (*stubs, "src")}
    precision = torch.get_float32_matmul_precision()
    package = types.ModuleType("src")
    package.__path__ = []
    sys.modules.update(stubs)
    sys.modules["src"] = package
    loaded = {}
    try:
        for name in ("utils", "backbone", "factory", "model"):
            spec = importlib.util.spec_from_file_location(f"src.{name}", root.parent / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"src.{name}"] = module
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        torch.set_float32_matmul_precision(precision)  # model.py sets "medium" at import
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in ("utils", "backbone", "factory", "model"):
            sys.modules.pop(f"src.{name}", None)
    namespace = types.SimpleNamespace(**loaded)
    holder = types.ModuleType("clay_official")
    holder.namespace = namespace
    sys.modules["clay_official"] = holder
    sys.modules["clay_official.model"] = loaded["model"]
    return namespace


def official_tiny_mae(seed: int = 0):
    """The official ``clay_mae_tiny`` (training configuration: mask ratio 0.75, patch 8, the metadata
    table unused here), every parameter moved off its initial value so LayerNorms and zero biases
    are not identities."""
    import torch

    official = load_official()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mae = official.model.clay_mae_tiny(
            mask_ratio=0.75, patch_size=8, norm_pix_loss=False, shuffle=True, metadata={},
            teacher="vit_large_patch14_reg4_dinov2.lvd142m", dolls=[], doll_weights=[],
        )  # fmt: skip
        with torch.no_grad():
            for p in mae.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return mae.eval()


def lightning_checkpoint(mae, path: Path, drop: tuple[str, ...] = (), extra: dict | None = None) -> Path:
    """Save ``mae`` as ``ClayMAEModule`` saves it: a Lightning checkpoint whose ``state_dict`` keys
    are ``model.<name>``; ``drop`` leaves keys out (for the missing-key test)."""
    import torch

    state = {f"model.{k}": v for k, v in mae.state_dict().items() if f"model.{k}" not in drop}
    record = {
        "epoch": 76, "global_step": 1000, "pytorch-lightning_version": "2.4.0", "state_dict": state,
        "hyper_parameters": {"model_size": "tiny", "mask_ratio": 0.75, "patch_size": 8, "shuffle": True,
                             "metadata_path": "configs/metadata.yaml", "teacher": "vit_large_patch14_reg4_dinov2.lvd142m"},
        **(extra or {}),
    }  # fmt: skip
    torch.save(record, path)
    return path


def official_embedding_encoder(mae):
    """The official encoder as the embedder runs it (``finetune/embedder/factory.py``'s
    ``EmbeddingEncoder``: no masking, no shuffle; 1.5.0's wheel does not ship that file, and
    ``Encoder`` with ``mask_ratio=0, shuffle=False`` computes the same), with ``mae``'s encoder weights."""
    import copy

    encoder = copy.deepcopy(mae.encoder)
    encoder.mask_ratio, encoder.shuffle = 0.0, False
    return encoder.eval()
