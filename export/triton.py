"""A Triton Inference Server model repository for the artifacts an export built.

``clay_trt/1/model.plan`` (``platform: "tensorrt_plan"``) where standard TensorRT built the plan, and
``clay_onnx/1/model.onnx`` (``platform: "onnxruntime_onnx"``: the ONNX Runtime CUDA artifact where
it was built, else the portable float32 graph), each with a ``config.pbtxt``: the inputs and
outputs of the exported graph without the batch dimension, ``max_batch_size`` from the export's
batch profile, dynamic batching at its preferred size, one instance on the GPU, and the engine's
own metadata as parameters. Triton serves the Open Inference Protocol, so a client written for
``clay-serve`` calls these models unchanged (only the model name differs).

A TensorRT-RTX plan gets no ``clay_trt``: Triton's TensorRT backend links standard TensorRT, which
cannot deserialise it (a ``tensorrt_plan`` must come from the TensorRT of the Triton release).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from clay.runtime.engines.choice import read_engine_metadata
from clay.runtime.engines.tensorrt_plan import STANDARD, PlanBuild
from clay.runtime.formats import format_named
from clay.runtime.metadata import EngineMetadata
from clay.runtime.sensors import SENSORS

from .tensorrt_build import BatchProfile

QUEUE_DELAY_US = 5000


def config_text(name: str, platform: str, metadata: EngineMetadata, batch: BatchProfile) -> str:
    """A ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""

    def tensors(kind: str, specs: dict[str, tuple[int, ...]]) -> list[str]:
        body = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, d))} ] }}' for n, d in specs.items())
        return [f"{kind} [", body, "]"]

    parameters = {"clay_bands": ",".join(metadata.bands), "clay_groups": ",".join(metadata.groups),
                  "clay_precision": metadata.precision, "clay_checkpoint_sha256": metadata.checkpoint_sha256,
                  "clay_metadata": json.dumps(metadata.to_dict())}  # fmt: skip
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {batch.max}",
             *tensors("input", metadata.input_shapes), *tensors("output", metadata.output_shapes),
             f"dynamic_batching {{ preferred_batch_size: [ {batch.opt} ] max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
             "instance_group [ { count: 1 kind: KIND_GPU } ]"]  # fmt: skip
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {json.dumps(key)} value {{ string_value: {json.dumps(value, ensure_ascii=False)} }} }}")
    return "\n".join(lines) + "\n"


def model_prefix(metadata: EngineMetadata) -> str:
    """The Triton model names' stem: ``clay`` for Clay v0 (``clay_onnx``, ``clay_trt``, as always);
    ``clay_v1_5_<sensor>`` for a Clay v1.5 sensor's artifacts (``clay_v1_5_sentinel_2_l2a_onnx``), so
    that one repository serves every sensor an export holds; a band subset's adds its bands
    (``clay_v1_5_sentinel_2_l2a_B02_B03_B04_B08_onnx``)."""
    if metadata.model == "clay-v0":
        return "clay"
    subset = metadata.sensor in SENSORS and tuple(metadata.bands) != SENSORS[metadata.sensor].bands
    parts = (metadata.model.removeprefix("clay-"), metadata.sensor, *(metadata.bands if subset else ()))
    return "clay_" + "_".join(part for part in parts if part).replace("-", "_").replace(".", "_")


def write_repository(artifacts: Path, repository: Path, batch: BatchProfile,
                     note: Callable[[str], None] = lambda _: None) -> list[Path]:  # fmt: skip
    """Copy the built artifacts into ``repository`` as Triton models; returns the models' folders.
    ``note`` receives one line for a plan left out (built by TensorRT-RTX)."""
    prefix = model_prefix(read_engine_metadata(artifacts / format_named("fp32").file_name))
    models = []
    plan = artifacts / format_named("plan").file_name
    if plan.is_file():
        build = PlanBuild.of(read_engine_metadata(plan))
        if build.flavour == STANDARD:
            models.append((f"{prefix}_trt", "tensorrt_plan", plan, "model.plan"))
        else:
            note(f"Triton repository: no {prefix}_trt: {plan.name} was built by {build.label}, which Triton's TensorRT "
                 "backend (standard TensorRT) cannot load; {prefix}_onnx serves the ONNX Runtime artifact")  # fmt: skip
    onnx = next(artifacts / f.file_name for f in (format_named("cuda"), format_named("fp32")) if (artifacts / f.file_name).is_file())
    models.append((f"{prefix}_onnx", "onnxruntime_onnx", onnx, "model.onnx"))
    written = []
    for name, platform, source, target in models:
        folder = repository / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "1" / target)
        (folder / "config.pbtxt").write_text(config_text(name, platform, read_engine_metadata(source), batch))
        written.append(folder)
    return written
