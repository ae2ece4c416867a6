"""Loading the published Clay v1.5 checkpoint (``clay-v1.5.ckpt``), and telling v0 from v1.5.

The published file is a Lightning checkpoint of ``ClayMAEModule``: ``state_dict`` holds
``model.encoder.*`` (what inference needs), ``model.decoder.*``, ``model.proj.*`` and the frozen
DINOv2 teacher ``model.teacher.*``; decoder, projection and teacher are ignored here. Only the
encoder's keys are loaded, strictly: a missing or mis-shaped one is a :class:`CheckpointError`
(a half-random encoder would give plausible-looking, wrong embeddings).

Trust: the file is read with torch's ``weights_only=True`` loader. A Lightning checkpoint can hold
objects that loader refuses (hyper-parameter or callback objects of other libraries). We could not
download the 4.8 GB published file here to see whether it does; if it does, it is read with
:func:`load_least_trust`: an unpickler that rebuilds tensors and plain containers and turns every
other object into an inert placeholder, so no code named by the file runs (``weights_only=False``
without trusting the file). A log line says when that happened.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch
from clay.runtime.errors import first_line
from torch import Tensor

from .checkpoint import CheckpointError
from .model_v15 import V15_SIZES, EncoderV15, V15Size

log = logging.getLogger(__name__)

CLAY_V0 = "clay-v0"
CLAY_V15 = "clay-v1.5"

_ENCODER = "encoder."
_V15_MARK = "encoder.patch_embedding.weight_generator.fc_weight.weight"  # the wavelength transformer
_V0_MARK = "encoder.latlon_embedding.weight"  # v0's lat/lon token
_SHOWN = 5


class _Inert:
    """What the least-trust unpickler makes of any object it does not know: accepts its arguments
    and state and does nothing with them."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


# What a tensor checkpoint needs to be rebuilt: torch's tensor rebuild functions (the storages come
# through torch's own persistent_load) and plain containers. Everything else becomes _Inert.
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),  # tensors saved as a subclass (Parameter) of Tensor
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}


class _LeastTrustUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or name in _DTYPES):
            return super().find_class(module, name)
        log.debug("checkpoint object %s.%s replaced by a placeholder", module, name)
        return _Inert


_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool"}

#: A pickle module for ``torch.load(..., pickle_module=...)`` whose unpickler trusts nothing else.
LEAST_TRUST_PICKLE = SimpleNamespace(Unpickler=_LeastTrustUnpickler, load=pickle.load, __name__="least_trust_pickle")


def read_least_trust(path: str | Path, mmap: bool = True) -> tuple[object, bool]:
    """``torch.load`` of ``path`` → (the object, whether the least-trust unpickler was needed):
    ``weights_only=True`` first; if that loader refuses an object, the least-trust unpickler
    (tensors and containers kept, other objects inert). ``mmap``: tensors stay in the file until
    used (the published file is 4.8 GB, its encoder 1.25 GB). Errors: :class:`CheckpointError`
    starting with the file name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if mmap and not zipfile.is_zipfile(path):
        mmap = False  # torch maps only its zip format; older (legacy) files are read whole
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), False
    except pickle.UnpicklingError:
        pass
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=LEAST_TRUST_PICKLE, mmap=mmap), True
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None


LEAST_TRUST_NOTE = ("holds objects torch's weights_only loader refuses; read with weights_only=False through an "
                    "unpickler that rebuilds only tensors and plain containers (no code from the file runs)")  # fmt: skip


def load_least_trust(path: str | Path, mmap: bool = True) -> object:
    """:func:`read_least_trust`, saying in one log line when the least-trust unpickler was needed."""
    stored, fell_back = read_least_trust(path, mmap)
    if fell_back:
        log.warning("%s: %s", path, LEAST_TRUST_NOTE)
    return stored


def model_state(obj: object) -> dict[str, Tensor]:
    """The tensors of a Lightning checkpoint's ``state_dict`` (or a bare dict), ``model.`` removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of weights, found {type(obj).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError("the checkpoint's 'state_dict' is not a dict")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def which_model(state: Mapping[str, Tensor]) -> str | None:
    """``clay-v1.5`` (a wavelength transformer in the encoder), ``clay-v0`` (a lat/lon token), or
    ``None`` for weights of neither."""
    if any(k.startswith("encoder.patch_embedding.weight_generator.") for k in state) or "encoder.cls_token" in state:
        return CLAY_V15
    if _V0_MARK in state:
        return CLAY_V0
    return None


def infer_v15_size(state: Mapping[str, Tensor]) -> V15Size:
    """The v1.5 size from the encoder's width (``cls_token``) and depth."""
    if "encoder.cls_token" not in state:
        raise CheckpointError("a Clay v1.5 checkpoint without 'model.encoder.cls_token'")
    dim = state["encoder.cls_token"].shape[-1]
    pattern = re.compile(r"encoder\.transformer\.layers\.(\d+)\.")
    depth = len({m.group(1) for k in state if (m := pattern.match(k))})
    for size in V15_SIZES.values():
        if (size.dim, size.depth) == (dim, depth):
            return size
    raise CheckpointError(f"Clay v1.5 weights of width {dim} × depth {depth} match no size ({', '.join(V15_SIZES)})")


def load_encoder_state(encoder: EncoderV15, state: Mapping[str, Tensor]) -> None:
    """Strict load of the ``encoder.*`` tensors; missing, unexpected and mis-shaped keys in one line."""
    own = {k[len(_ENCODER) :]: v for k, v in state.items() if k.startswith(_ENCODER)}
    expected = encoder.state_dict()
    problems = []
    for label, keys in (
        ("missing", [k for k in expected if k not in own]),
        ("unexpected", [k for k in own if k not in expected]),
        ("wrong shape", [f"{k} {tuple(own[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
                         if k in own and own[k].shape != v.shape]),
    ):  # fmt: skip
        if keys:
            shown = ", ".join(f"model.encoder.{k}" for k in keys[:_SHOWN])
            problems.append(f"{len(keys)} {label}: {shown}" + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""))
    if problems:
        raise CheckpointError(f"weights do not fit the Clay v1.5 '{encoder.size.name}' encoder: " + "; ".join(problems))
    encoder.load_state_dict(own, strict=True)


def load_encoder_v15(path: str | Path, stored: object | None = None) -> EncoderV15:
    """The v1.5 encoder with the weights of ``path`` (``stored``: the file already read). Errors:
    :class:`CheckpointError` whose message starts with the file name."""
    path = Path(path)
    try:
        state = model_state(load_least_trust(path) if stored is None else stored)
        if which_model(state) != CLAY_V15:
            raise CheckpointError("not a Clay v1.5 checkpoint (no wavelength transformer in model.encoder)")
        encoder = EncoderV15(infer_v15_size(state))
        load_encoder_state(encoder, state)
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return encoder.eval()
