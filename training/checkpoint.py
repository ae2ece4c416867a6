"""Loading Clay weights: the published Clay v0 checkpoint, bare state dicts and our own checkpoints.

All three share one key layout (``model.encoder...``/``model.decoder...`` with vit-pytorch 1.6.4
block names, see the spec), so loading is: find the state dict, strip the prefix, infer the size,
and load strictly. A partial load would silently give a half-random model whose embeddings look
plausible, so any mismatch is a :class:`CheckpointError` naming the first offending keys.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from clay.runtime.errors import first_line
from torch import Tensor

from .model import ClayMAE
from .sizes import SIZES, ModelSize, get_size

log = logging.getLogger(__name__)

#: The bundled demo weights (``python -m clay.training.demo`` makes them) and the band groups the
#: demo engine takes: the S2 groups of the real scene they were trained on.
DEMO_WEIGHTS = Path(__file__).parent / "demo" / "clay-demo-tiny.pt"
DEMO_GROUPS = ("rgb", "rededge", "nir", "swir")

_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """The file is not a Clay checkpoint, or its weights do not fit the model."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed, so artifacts can name exactly which weights they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_file(path: str | Path) -> dict:
    """Unpickle a checkpoint file, preferring torch's safe ``weights_only`` loader.

    Lightning checkpoints written by older releases may hold hyper-parameter objects that the safe
    loader refuses; for those we fall back to a full unpickle, since the user named the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        log.warning("%s: not loadable with weights_only=True, unpickling it fully", path)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None


def extract_state_dict(obj: object) -> dict[str, Tensor]:
    """The model weights of a Lightning checkpoint, a ``{"state_dict": ...}`` wrapper or a bare dict,
    with the ``model.`` prefix (Lightning's attribute name) removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of weights, found {type(obj).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError("the checkpoint's 'state_dict' is not a dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError("the checkpoint holds no weight tensors")
    if all(k.startswith("model.") for k in tensors):
        tensors = {k[len("model.") :]: v for k, v in tensors.items()}
    return tensors


def infer_size(state: Mapping[str, Tensor]) -> ModelSize:
    """Which of the published sizes these weights are, read from their shapes.

    Weights of a shape that no size has are an error rather than an ad-hoc size: every downstream
    artifact records the size by name.
    """
    try:
        dim = state["encoder.latlon_embedding.weight"].shape[0]
        dec_dim = state["decoder.mask_patch"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a Clay MAE state dict: no {exc.args[0]!r}") from None
    depth = _count_layers(state, "encoder.transformer.layers.")
    dec_depth = _count_layers(state, "decoder.transformer.layers.")
    for size in SIZES.values():
        if (size.dim, size.depth, size.decoder_dim, size.decoder_depth) == (dim, depth, dec_dim, dec_depth):
            return size
    raise CheckpointError(
        f"weights with encoder dim {dim} × depth {depth}, decoder dim {dec_dim} × depth {dec_depth} "
        f"match no model size ({', '.join(SIZES)})"
    )


def load_state_into(model: ClayMAE, state: Mapping[str, Tensor]) -> None:
    """Strict load that reports missing, unexpected and mis-shaped keys in one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:_SHOWN_KEYS]) + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"weights do not fit Clay '{model.size.name}': " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def read_clay_state(path: str | Path) -> tuple[dict[str, Tensor], ModelSize]:
    """The Clay MAE weights of ``path`` (published Clay v0, bare state dict or ours) and the size they
    are, without building a model. Errors are :class:`CheckpointError` whose message starts with the
    file name."""
    path = Path(path)
    try:
        state = extract_state_dict(read_checkpoint_file(path))
        return state, infer_size(state)
    except CheckpointError as exc:
        raise _naming(path, exc) from None


def load_clay_mae(path: str | Path, size: str | None = None) -> ClayMAE:
    """A :class:`ClayMAE` with the weights of ``path`` (published Clay v0, bare state dict or ours).

    ``size`` is inferred from the weights when not given; when given it must agree with them.
    Errors are :class:`CheckpointError` whose message starts with the file name.
    """
    path = Path(path)
    state, inferred = read_clay_state(path)
    model = ClayMAE(inferred)
    init_from_state(model, state, path, size)
    return model.eval()


def init_from_state(model: ClayMAE, state: Mapping[str, Tensor], path: str | Path, size: str | None = None) -> None:
    """Load ``state`` (read from ``path``) into ``model`` strictly; ``size``, where given, is the size the
    caller asked for and must be the weights' own."""
    try:
        inferred = infer_size(state)
        if size is not None and get_size(size).name != inferred.name:
            raise CheckpointError(f"--size {size} was asked for, but the weights are '{inferred.name}'")
        load_state_into(model, state)
    except CheckpointError as exc:
        raise _naming(Path(path), exc) from None


def _naming(path: Path, exc: CheckpointError) -> CheckpointError:
    message = str(exc)
    return CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}")


def _count_layers(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0
