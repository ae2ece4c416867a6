"""OpenVINO on the CPU, for the OpenVINO IRs (``.xml`` + ``.bin``) that ``clay-export --bf16-cpu`` and
``--int8-openvino`` write: the transformer blocks in bf16 where the CPU has bf16 dot products (AMX,
AVX-512 BF16), or their matmuls in int8 (NNCF's quantisers, which OpenVINO runs on int8 dot
products) with the float parts between them in bf16; the patch embedding, encodings and final norm
pinned to float32 in both (see ``clay.export.openvino``).

The IR is read twice: its XML here, without OpenVINO (the Clay metadata in its ``<rt_info><clay>``
and which layers carry the float32 pin), then by OpenVINO to compile it. Torch-free on purpose.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import first_line
from ..metadata import EngineMetadata
from .base import Engine, EngineError

METADATA_SECTION = "clay"  # written by clay.export.openvino.build_bf16_ir
PIN_ATTRIBUTE = "precise"
# The pinned layers whose precision is checked after compiling: the patch embeddings'
# convolutions, which read raw values (S2 DNs to 10⁴; the folded normalisation subtracts large
# numbers). OpenVINO 2026.4 keeps every pinned layer it compiles as itself in float32; layers it
# re-creates (the metadata tokens' matmuls become FullyConnected nodes, atan2's division is
# rewritten) lose the pin and run bf16, on sines and angles within ±π, which bf16 holds to 2⁻⁸.
CHECKED_LAYER_TYPES = ("Convolution",)


def read_ir(path: Path) -> tuple[dict[str, str], set[str]]:
    """The Clay metadata props (JSON-encoded values, as in ONNX ``metadata_props``) and the names of
    the float32-pinned layers of an OpenVINO IR ``.xml``; raises :class:`EngineError`."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise EngineError(f"{path}: not an OpenVINO IR ({exc})") from None
    section = root.find(f"rt_info/{METADATA_SECTION}")
    props = {} if section is None else {child.tag: child.get("value", "") for child in section}
    pinned = {layer.get("name", "") for layer in root.iter("layer")
              if layer.find(f"rt_info/attribute[@name='{PIN_ATTRIBUTE}']") is not None}  # fmt: skip
    return props, pinned


class OpenVinoEngine(Engine):
    """A bf16 IR compiled by OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT`` bf16.

    Where the CPU has no bf16 dot products OpenVINO ignores the hint and runs float32 (its CPU
    plugin's ``Config::readProperties``); where an OpenVINO version ignored the float32 pins, the
    engine recompiles in float32 rather than run the raw inputs in bf16. ``describe()`` says which.
    """

    def __init__(self, path: Path, metadata: EngineMetadata, threads: int | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.backend, self.path, self.metadata = "openvino-cpu", path, metadata
        self.preferred_batch = 2  # the CPU batch of onnx-cpu: no gain from larger ones on 2 cores
        _, pinned = read_ir(path)
        core = ov.Core()
        threads = threads or len(os.sched_getaffinity(0))
        compiled = self._compile(core, "bf16", threads)
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision_fallback = ""
        unpinned = bf16_pinned_layers(compiled, pinned)
        if unpinned:
            self.precision_fallback = (f"OpenVINO {ov.get_version().split('-')[0]} ran float32-pinned layers in bf16 "
                             f"({unpinned[0]}…): compiled in f32")  # fmt: skip
            compiled = self._compile(core, "f32", threads)
            self.inference_precision = "f32"
        self._request = compiled.create_infer_request()
        self._outputs = [output.get_any_name() for output in compiled.outputs]

    def _compile(self, core, precision: str, threads: int):
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        try:
            return core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ traces
            raise EngineError(f"{self.path}: OpenVINO cannot load it ({first_line(exc)[:300]})") from None

    def _infer(self, pixels, lonlat, date):
        results = self._request.infer({"pixels": pixels, "lonlat": lonlat, "date": date})
        # the request's output tensors are reused by the next call: copy them out
        return {name: np.array(results[k], copy=True) for k, name in enumerate(self._outputs)}

    def runs_in(self) -> str:
        quantised = self.metadata.precision == "int8"  # its matmuls int8 whatever the hint; the rest follows it
        if self.precision_fallback:
            what = "int8 artifact, its float parts run" if quantised else f"{self.metadata.precision} artifact run"
            return f"{what} in f32: {self.precision_fallback}"
        if self.inference_precision != "bf16":
            what = "int8 artifact, its float parts run" if quantised else f"{self.metadata.precision} artifact run"
            return f"{what} in {self.inference_precision}: this CPU has no bf16 dot products"
        return "int8, its float parts in bf16" if quantised else self.metadata.precision

    def _release(self) -> None:
        del self._request


def bf16_pinned_layers(compiled, pinned: set[str]) -> list[str]:
    """Names of the checked pinned layers (``CHECKED_LAYER_TYPES``) that ``compiled`` (an OpenVINO
    ``CompiledModel``) runs in bf16: empty when OpenVINO honoured the pins."""
    found = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layers = set(info["originalLayersNames"].astype(str).split(","))
        if (info["layerType"].astype(str) in CHECKED_LAYER_TYPES and layers & pinned
                and info["runtimePrecision"].astype(str) == "bf16"):  # fmt: skip
            found.append(op.get_friendly_name())
    return found
