"""The OpenVINO CPU artifacts: an OpenVINO IR whose transformer blocks run in bf16 and whose ends
are pinned to float32 (issue 27), and the same IR with the blocks' matmuls statically quantised to
int8 by NNCF (issue 35, :func:`build_int8_ir`: the ends excluded from quantisation and pinned alike).

OpenVINO's CPU plugin runs a model in bf16 where the CPU has bf16 dot products (AMX, AVX-512 BF16)
and ``INFERENCE_PRECISION_HINT`` is bf16: every node, except the graph's tail back to the last
matmul (``Graph::EnforceInferencePrecision`` in ``src/plugins/intel_cpu/src/graph.cpp``) and the
nodes whose runtime info forbids a precision change. bf16 keeps 8 bits of mantissa, too few for
what comes before the first block: raw S2 DNs up to 10⁴ into the normalisation folded into the
patch embedding (a difference of large numbers), the year (2020 rounds to 2016 or 2024), lon/lat.
So, like the CUDA artifact (``cuda.py``, whose :func:`~.cuda.transformer_ends` finds the same two
ends), every node the first block's input depends on and everything from the final LayerNorm on
is pinned to float32. The blocks' matmuls, attention and GELU run in bf16; their LayerNorms keep
sums, means and variances in float32 (OpenVINO's MVN kernel takes ``float*`` statistics,
``jit_mvn_call_args``); the residual stream reaches the output without a matmul, so the tail rule
above keeps it in float32 too. OpenVINO re-creates a few pinned nodes when it compiles (the
metadata tokens' two small matmuls become FullyConnected nodes, atan2's division is rewritten);
those lose the pin and run bf16 on sines and angles within ±π, which bf16 holds to 2⁻⁸.

The pin is the IR's ``precise`` runtime attribute: the legacy ``ov::DisableFP16Compression``, which
OpenVINO 2026's IR reader turns into ``DisablePrecisionConversion`` (``ConvertLegacyPrecisionAttribute``)
and its CPU plugin honours for bf16 as well (measured: the patch embeddings run f32, blocks bf16).
OpenVINO's Python API cannot set C++ runtime attributes, so the pin is written into the saved IR's
XML; the runtime (``clay.runtime.engines.openvino_engine``) checks on every load that the compiled model
runs the pinned patch-embedding convolutions in float32, and compiles in float32 where it does not.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import onnx
from clay.runtime.metadata import EngineMetadata

from .cuda import transformer_ends

PIN_ATTRIBUTE = "precise"  # ov::DisableFP16Compression's name in IR XML (version 0)
METADATA_SECTION = "clay"  # the IR's <rt_info><clay>...</clay>, one element per metadata field
SKIPPED_TYPES = ("Parameter", "Result", "Constant")  # no compute: nothing to pin


def openvino_unavailable_reason(quantiser: bool = False) -> str | None:
    """Why the OpenVINO artifact (``quantiser``: the int8 one, which NNCF makes) cannot be built
    here, or ``None``."""
    try:
        import openvino  # noqa: F401

        if quantiser:
            import nncf  # noqa: F401
    except ImportError as exc:
        extra = "openvino" if exc.name == "openvino" else "int8-openvino"
        return f'{exc.name} is not installed: pip install "clay-runtime[{extra}]", then run this command again'
    return None


def build_bf16_ir(source: Path, xml: Path, metadata: EngineMetadata) -> int:
    """Convert the float32 ONNX graph ``source`` (explicit attention) into the IR ``xml`` (+ its
    ``.bin``, float32 weights) with the float32 ends pinned and ``metadata`` in its runtime info;
    returns the number of pinned layers."""
    model, pinned = read_with_ends(source)
    save_pinned(model, pinned, xml, metadata)
    return len(pinned)


def build_int8_ir(source: Path, xml: Path, metadata: EngineMetadata, feeds: list[dict]) -> tuple[int, int]:
    """The IR ``xml`` with the transformer blocks statically quantised to int8 by NNCF's post-training
    quantisation (``ModelType.TRANSFORMER``: int8 weights per output channel, int8 activations into
    every MatMul with ranges from the calibration ``feeds``, SmoothQuant on the MatMuls' inputs,
    softmax and LayerNorm left float), the float32 ends excluded from quantisation and pinned as in
    :func:`build_bf16_ir` (so the float parts between the blocks' int8 matmuls run bf16 where the CPU
    has bf16 dot products, the ends float32). Returns (pinned layers, FakeQuantize nodes inserted)."""
    import contextlib
    import io
    import logging

    import nncf

    # NNCF logs every layer it leaves unquantised at INFO and draws rich progress bars on stdout
    # (where clay-export lists the files it wrote): the export log gets one line of its own instead;
    # NNCF's warnings still come through
    nncf.set_log_level(logging.WARNING)
    model, pinned = read_with_ends(source)
    with contextlib.redirect_stdout(io.StringIO()):
        quantised = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                                  ignored_scope=nncf.IgnoredScope(names=sorted(pinned), validate=False))  # fmt: skip
    names = {op.get_friendly_name() for op in quantised.get_ordered_ops()}
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantised.get_ordered_ops())
    if not fake_quantize:
        raise ValueError("NNCF quantised no layer: the artifact would be the float32 graph")
    # pins on layers NNCF folded away (constant subgraphs) have nothing left to pin
    save_pinned(quantised, pinned & names, xml, metadata)
    return len(pinned & names), fake_quantize


def read_with_ends(source: Path):
    """The ONNX graph ``source`` read by OpenVINO (an ``ov.Model``) and the names of the layers that
    stay float32 (:func:`float32_layers`)."""
    import openvino as ov

    first_norm, last_norm = transformer_ends(onnx.load(str(source), load_external_data=False))
    model = ov.Core().read_model(str(source))
    return model, float32_layers(model, first_norm.input[0], last_norm.input[0])


def save_pinned(model, pinned: set[str], xml: Path, metadata: EngineMetadata) -> None:
    """Save ``model`` as the IR ``xml`` (float32 weights) with ``metadata`` in its runtime info and
    the layers ``pinned`` given the float32 pin."""
    import openvino as ov

    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    shared = {name for name in pinned if names.count(name) > 1}
    if shared:  # the XML is edited by layer name
        raise ValueError(f"layer names shared by several OpenVINO nodes: {', '.join(sorted(shared)[:3])}")
    rt_info = model.get_rt_info()
    if "framework" in rt_info:  # the ONNX frontend's copy of metadata_props: ours is written below
        del rt_info["framework"]
    for key, value in metadata.to_props().items():
        model.set_rt_info(value, [METADATA_SECTION, key])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    pin_layers(xml, pinned)


def float32_layers(model, stem_output: str, final_norm_input: str) -> set[str]:
    """Names of the OpenVINO nodes that stay float32: the producer of tensor ``stem_output`` (what
    the first block reads) with everything it depends on, and everything that consumes tensor
    ``final_norm_input`` downstream (the final LayerNorm, the means). ``model`` is an ``ov.Model``."""
    producer = next(op for op in model.get_ordered_ops() for out in op.outputs() if stem_output in out.get_names())
    tail_start = next(out for op in model.get_ordered_ops() for out in op.outputs() if final_norm_input in out.get_names())
    stem = _walk([producer], lambda op: [i.get_source_output().get_node() for i in op.inputs()])
    tail = _walk([t.get_node() for t in tail_start.get_target_inputs()],
                 lambda op: [t.get_node() for out in op.outputs() for t in out.get_target_inputs()])  # fmt: skip
    return {op.get_friendly_name() for op in stem + tail if op.get_type_name() not in SKIPPED_TYPES}


def _walk(start: list, neighbours) -> list:
    seen, order, stack = set(), [], list(start)
    while stack:
        op = stack.pop()
        if id(op) not in seen:
            seen.add(id(op))
            order.append(op)
            stack.extend(neighbours(op))
    return order


def pin_layers(xml: Path, names: Iterable[str]) -> None:
    """Give the IR's layers ``names`` the float32 pin (``<rt_info><attribute name="precise"/>``)."""
    wanted = set(names)
    tree = ET.parse(xml)
    found = set()
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") not in wanted:
            continue
        found.add(layer.get("name"))
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt_info)
        if not any(a.get("name") == PIN_ATTRIBUTE for a in rt_info.iter("attribute")):
            ET.SubElement(rt_info, "attribute", {"name": PIN_ATTRIBUTE, "version": "0"})
    if found != wanted:
        raise ValueError(f"{xml.name}: no layer named {min(wanted - found)!r} to pin")
    tree.write(xml, encoding="utf-8", xml_declaration=True)
