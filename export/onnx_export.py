"""Tracing :class:`InferenceEncoder` to ONNX: dynamic batch, opset 17, simplified, self-describing."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from clay.runtime.metadata import EngineMetadata

from .graph import InferenceEncoder

OPSET = 17  # first opset with a native LayerNormalization
INPUT_NAMES = ("pixels", "lonlat", "date")


def sample_inputs(module: InferenceEncoder, batch: int = 2, chip_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """Plausible tracing inputs (values only matter for constant folding checks, not the graph), at
    the module's chip size (Clay v1.5 graphs have one; v0's are 512)."""
    chip_size = chip_size or getattr(module, "chip_size", 512)
    pixels = torch.full((batch, module.channels, chip_size, chip_size), 1000.0)
    lonlat = torch.tensor([[103.75, 17.92]]).repeat(batch, 1)
    date = torch.tensor([[2020.0, 2.0, 23.0]]).repeat(batch, 1)
    return pixels, lonlat, date


def export_onnx(module: InferenceEncoder, path: Path, metadata: EngineMetadata) -> onnx.ModelProto:
    """Write ``module`` as an ONNX file at ``path`` with ``metadata`` in its ``metadata_props``."""
    names = (*INPUT_NAMES, *module.output_names)
    contrib = module.attention == "onnxruntime"  # ONNX Runtime's com.microsoft ops have no ONNX schema
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, once per call
        torch.onnx.export(
            module,
            sample_inputs(module),
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(module.output_names),
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=OPSET,
            do_constant_folding=True,
            custom_opsets={"com.microsoft": 1} if contrib else None,
        )
    model = simplify(onnx.load(str(path)), strict=not contrib)
    model.producer_name = "clay-export"
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=not contrib)
    onnx.save(model, str(path))
    return model


def simplify(model: onnx.ModelProto, strict: bool = True) -> onnx.ModelProto:
    """Constant folding and dead-node removal with onnxsim, keeping the batch dimension dynamic."""
    from onnxsim import simplify as onnxsim_simplify

    simplified, ok = onnxsim_simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph")
    return onnx.shape_inference.infer_shapes(simplified, strict_mode=strict)


def read_metadata(path: Path) -> EngineMetadata:
    model = onnx.load(str(path), load_external_data=False)
    return EngineMetadata.from_props({p.key: p.value for p in model.metadata_props})


def graph_op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
