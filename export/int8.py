"""Dynamic int8 quantisation of the fp32 graph with ONNX Runtime, for CPUs and edge devices."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from clay.runtime.metadata import EngineMetadata


def quantize_int8(fp32_path: Path, int8_path: Path, metadata: EngineMetadata) -> None:
    """Int8 weights (per output channel) and int8 activations quantised at run time.

    Dynamic quantisation needs no calibration data, and the MatMul weights hold nearly all of the
    encoder's FLOPs, which is where int8 kernels pay.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process is for static quantisation
    try:
        quantize_dynamic(
            str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
    finally:
        root.setLevel(level)
    model = onnx.load(str(int8_path))
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(int8_path))
