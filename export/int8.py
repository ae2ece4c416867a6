"""The CPU/edge artifact: dynamic int8 MatMuls around ONNX Runtime's fused attention kernel.

Measured on the 2-core reference CPU with the `small` model (benchmarks/results/ablation-small.md):
of the levers tried, only two paid: int8 MatMul weights (VNNI kernels) and the fused
MultiHeadAttention kernel in place of MatMul-Softmax-MatMul (+9 %). ONNX Runtime's transformer
optimizer (SkipLayerNormalization, bias-GELU) and int8 attention matmuls did not pay and are not used.
The artifact therefore runs on ONNX Runtime only (the fp32 and fp16 graphs are the portable ones).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from clay.runtime.metadata import EngineMetadata


def quantize_int8(fp32_path: Path, int8_path: Path, metadata: EngineMetadata) -> None:
    """Int8 weights (per output channel) and int8 activations quantised at run time.

    Dynamic quantisation needs no calibration data; the weight MatMuls hold two thirds of the
    encoder's FLOPs, and the attention (the other third) stays float inside the fused kernel.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
    )
    model = onnx.load(str(int8_path))
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(int8_path))
