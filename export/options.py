"""What one ``clay-export`` run is asked for: the options every builder and the orchestration read.

Its own module so that the builders (:mod:`.builders`) and the orchestration that calls them
(:mod:`.artifacts`) both import it and neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clay.runtime.formats import ArtifactFormat, formats_for_flags

from .tensorrt_build import BatchProfile


@dataclass
class ExportOptions:
    out: Path = Path(".")
    checkpoint: Path | None = None
    size: str | None = None
    random_weights: bool = False
    groups: tuple[str, ...] = ()
    fp16: bool = False
    int8_cpu: bool = False
    bf16_cpu: bool = False
    int8_openvino: bool = False
    patch_embeddings: bool = False
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 32))
    compute_capability: str = "ampere+"  # the plan's targets: tensorrt_build.parse_targets
    timing_cache: Path | None = None
    check: bool = True
    triton_repository: Path | None = None
    # Clay v1.5 only: the sensors (clay.runtime.sensors names) to export one artifact set each for,
    # the chip size (default: v1.5's trained 256) and the input conventions (clay.runtime.sensors.CONVENTIONS).
    sensors: tuple[str, ...] = ()
    chip_size: int | None = None
    convention: str = "training"
    resampling: str | None = None  # what the weights expect; None: from the checkpoint (artifacts.trained_resampling)

    @property
    def formats(self) -> tuple[ArtifactFormat, ...]:
        """The rows of the format table these options ask for."""
        wanted = (("--fp16", self.fp16), ("--int8-cpu", self.int8_cpu), ("--bf16-cpu", self.bf16_cpu),
                  ("--int8-openvino", self.int8_openvino))
        return formats_for_flags({flag for flag, on in wanted if on})

