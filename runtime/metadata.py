"""What an exported Clay artifact says about itself: the contract between ``clay-export`` and the runtime.

Every artifact carries this record (ONNX: one ``metadata_props`` entry per field, values JSON-encoded;
TensorRT plan: a ``<plan>.json`` sidecar holding the same fields as one JSON object), so that the
runtime can refuse a scene the engine cannot take before any work starts. Torch-free on purpose.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .bands import INPUT_UNITS
from .resampling import check_resampling

#: The newest metadata format this runtime reads. Clay v0 artifacts are written as format 1 (what
#: they always were); Clay v1.5 artifacts as format 2, so that a runtime from before v1.5 refuses them
#: in one line instead of reading them as v0 engines (their model, sensor and conventions fields).
FORMAT_VERSION = 2
V0_FORMAT_VERSION = 1
V15_FORMAT_VERSION = 2


def package_versions() -> dict[str, str]:
    """The versions that made an artifact or a measurement, for its provenance record."""
    versions = {}
    for name in ("clay-runtime", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim", "polygraphy", "openvino"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


class MetadataError(ValueError):
    """The artifact has no Clay metadata, or metadata this runtime cannot use."""


@dataclass(frozen=True)
class EngineMetadata:
    """Self-description of an exported Clay encoder.

    ``bands`` is the order of the ``pixels`` input's channels (raw physical values, spec order);
    ``band_means``/``band_stds`` are the normalisation constants folded into the graph for them.
    Clay v1.5 artifacts (``model`` "clay-v1.5", format 2) hold one sensor's bands in its metadata.yaml
    order; their ``groups`` is that sensor's name alone (one token group: ``patch_embeddings`` is
    ``[B, 1, S/8, S/8, dim]``).
    """

    model_size: str
    dim: int
    chip_size: int
    patch_size: int
    bands: tuple[str, ...]
    groups: tuple[str, ...]
    band_means: tuple[float, ...]
    band_stds: tuple[float, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    precision: str  # "fp32" | "fp16" | "int8" | "bf16"
    checkpoint: str
    checkpoint_sha256: str
    weights: str  # human-readable provenance, e.g. "Clay v0 (published)" or "demo weights ..."
    exporter: str
    versions: dict[str, str] = field(default_factory=dict)
    # The units ``pixels`` expects (clay.runtime.bands.INPUT_UNITS); artifacts from before this field
    # were exported for the same units.
    input_units: dict[str, str] = field(default_factory=lambda: dict(INPUT_UNITS))
    # How the weights saw bands resampled onto the chip grid ("nearest" | "bilinear", see
    # clay.runtime.resampling for the sources); None: exported before this field, read bilinear as before.
    resampling: str | None = None
    format_version: int = V0_FORMAT_VERSION
    # Which Clay: "clay-v0" (artifacts from before this field are v0) or "clay-v1.5".
    model: str = "clay-v0"
    # Clay v1.5 only: the sensor (clay.runtime.sensors name) the artifact's constants were folded for,
    # its bands' central wavelengths (µm, in ``bands`` order), the gsd (m) folded into the position
    # encoding, and how the inputs are turned into the model's (conventions, SAR dB, normalisation).
    sensor: str = ""
    band_wavelengths: tuple[float, ...] = ()
    gsd: float | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. how a plan was built: tensorrt_plan.PlanBuild

    @property
    def has_patch_embeddings(self) -> bool:
        return "patch_embeddings" in self.outputs

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The exported graph's inputs, one chip's shape each (the batch axis left out): what the
        engines allocate, ``clay-serve`` declares and Triton's model configs say."""
        return {"pixels": (len(self.bands), self.chip_size, self.chip_size), "lonlat": (2,), "date": (3,)}

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The exported graph's outputs, one chip's shape each (the batch axis left out)."""
        grid = self.chip_size // self.patch_size
        shapes = {"embedding": (self.dim,)}
        if self.has_patch_embeddings:
            shapes["patch_embeddings"] = (len(self.groups), grid, grid, self.dim)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for key, value in record.items():
            if isinstance(value, tuple):
                record[key] = list(value)
        return record

    def to_props(self) -> dict[str, str]:
        """Flat string map for ONNX ``metadata_props`` (each value JSON-encoded)."""
        return {key: json.dumps(value) for key, value in self.to_dict().items()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EngineMetadata:
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in record]
        if missing:
            raise MetadataError(f"not a Clay artifact: metadata lacks {', '.join(missing)}")
        version = int(record.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise MetadataError(
                f"artifact metadata format {version} is newer than this runtime understands ({FORMAT_VERSION})"
            )
        values = {}
        for f in fields(cls):
            if f.name not in record:
                continue
            value = record[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        try:
            check_resampling(values.get("resampling"), "the artifact's resampling")
        except ValueError as exc:
            raise MetadataError(str(exc)) from None
        return cls(**values)

    @classmethod
    def from_props(cls, props: dict[str, str]) -> EngineMetadata:
        """Inverse of :meth:`to_props`; raises :class:`MetadataError` for foreign ONNX files."""
        try:
            record = {key: json.loads(value) for key, value in props.items() if key in _FIELD_NAMES}
        except json.JSONDecodeError as exc:
            raise MetadataError(f"unreadable Clay metadata: {exc}") from None
        return cls.from_dict(record)


_FIELD_NAMES = {f.name for f in fields(EngineMetadata)}
