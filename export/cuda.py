"""The ONNX Runtime CUDA artifact: float16 with ONNX Runtime's fused transformer kernels.

Starting from the float32 graph whose attention is ONNX Runtime's ``MultiHeadAttention`` (flash or
memory-efficient attention on CUDA), ONNX Runtime's transformer optimizer fuses each residual Add
with the LayerNorm after it (``SkipLayerNormalization``) and the MLP's GELU; then the transformer
blocks are converted to float16. Kept in float32: everything before the first block (raw S2 DNs
reach 65535, past float16's range, and SAR patch sums overflow it) and the final LayerNorm with the
means after it. float16 LayerNorm and softmax kernels accumulate in float32 on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from clay.runtime.metadata import EngineMetadata
from onnx import TensorProto


def optimise_for_cuda(fused_fp32: Path, out: Path, heads: int, dim: int, metadata: EngineMetadata) -> dict[str, int]:
    """Fuse, convert to float16 (outside the kept-float32 ends) and stamp ``metadata``; returns the
    fused-operator counts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.optimizer import optimize_model

    optimised = optimize_model(str(fused_fp32), model_type="vit", num_heads=heads, hidden_size=dim, opt_level=0)
    fused = {name: count for name, count in optimised.get_fused_operator_statistics().items() if count}
    model = optimised.model
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(float32_ends(model)))
    fold_cast_round_trips(model)
    drop_duplicate_casts(model)
    unique_node_names(model)
    topological_sort(model)
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "clay-export"
    onnx.save(model, str(out))
    return fused


def transformer_ends(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The first transformer block's first LayerNorm and the final LayerNorm of an exported encoder:
    what lies before the first (patch embedding on raw values, encodings, metadata tokens) and from
    the last on (final norm and means) is what a reduced-precision artifact keeps in float32.

    The first block is found through its attention (ONNX Runtime's ``MultiHeadAttention``, or the
    explicit graph's first ``Softmax``): the last LayerNorm it depends on is the block's own.
    Raises ``ValueError`` for a graph with no attention.
    """
    nodes = list(model.graph.node)
    attention = next((n for n in nodes if n.op_type in ("MultiHeadAttention", "Softmax")), None)
    if attention is None:
        raise ValueError("no attention node (MultiHeadAttention or Softmax): not a Clay encoder graph")
    feeding = _upstream(model, attention.input)
    first_norm = [n for n in nodes if n.name in feeding and n.op_type == "LayerNormalization"][-1]
    last_norm = [n for n in nodes if n.op_type in ("SkipLayerNormalization", "LayerNormalization")][-1]
    return first_norm, last_norm


def float32_ends(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that stay float32: every node the first block's input depends on (patch
    embedding, encodings, metadata tokens), and the last normalisation with everything after it."""
    first_norm, last_norm = transformer_ends(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tail, stack = set(), [last_norm]
    while stack:
        node = stack.pop()
        if node.name not in tail:
            tail.add(node.name)
            stack.extend(c for output in node.output for c in consumers.get(output, []))
    return _upstream(model, [first_norm.input[0]]) | tail


def _upstream(model: onnx.ModelProto, names) -> set[str]:
    """Names of the nodes the tensors ``names`` depend on."""
    producers = {output: node for node in model.graph.node for output in node.output}
    seen, stack = set(), list(names)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            stack.extend(node.input)
    return seen


def fold_cast_round_trips(model: onnx.ModelProto) -> None:
    """Remove float32 → float16 → float32 cast pairs the converter leaves between float32 nodes: they
    only lose precision (a graph input of 65535 would become infinity)."""
    graph = model.graph

    def target(node: onnx.NodeProto) -> int:
        return next(a.i for a in node.attribute if a.name == "to")

    producers = {output: node for node in graph.node for output in node.output}
    bypass = {}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if source is not None and source.op_type == "Cast" and target(node) == TensorProto.FLOAT and target(source) == TensorProto.FLOAT16:
            bypass[node.output[0]] = source.input[0]
    outputs = {o.name for o in graph.output}
    kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in bypass and n.output[0] not in outputs)]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = bypass.get(name, name)
    used = {name for node in kept for name in node.input} | outputs
    kept = [n for n in kept if not (n.op_type == "Cast" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)


def unique_node_names(model: onnx.ModelProto) -> None:
    """The float16 converter names its casts after tensors, so a tensor cast twice gives two nodes of
    one name, which ONNX Runtime refuses to load: number the repeats."""
    seen: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in seen:
            seen[node.name] += 1
            node.name = f"{node.name}_{seen[node.name]}"
        else:
            seen[node.name] = 0


def drop_duplicate_casts(model: onnx.ModelProto) -> None:
    """The converter can emit the same cast (same output name) twice when a tensor feeds two
    kept-float32 nodes: keep one; the graph must define every tensor once."""
    graph = model.graph
    seen: set[str] = set()
    kept = []
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in seen:
            continue
        kept.append(node)
        seen.update(node.output)
    del graph.node[:]
    graph.node.extend(kept)


def topological_sort(model: onnx.ModelProto) -> None:
    """Order the nodes so that every input is defined before it is used (the converter appends the
    casts it inserts at the end)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"the graph has a cycle or an undefined input near {pending[0].name}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        ordered += ready
        for node in ready:
            available.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)
