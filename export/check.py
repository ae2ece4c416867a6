"""Artifact checks against eager PyTorch fp32: each artifact runs on the same chips (ONNX files on
Polygraphy's ONNX Runtime runner; a TensorRT plan and the OpenVINO IR on the runtime's own backends,
what ``clay-run`` runs: Polygraphy reaches TensorRT-RTX only through a process-wide switch and has no
OpenVINO runner), and every output is scored by cosine similarity and max abs error against the
eager encoder.

A check is data (each format's cosine bound, in the format table) plus a report; the command fails
when any chip of any artifact falls below its bound. A plan is checked only where it can run (a GPU
it was built for); elsewhere :func:`unchecked_reason` says why in one line.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from clay.runtime.bands import BAND_NAMES, bands_of_groups
from clay.runtime.formats import ArtifactFormat
from clay.training.model import Encoder, normalise
from clay.training.synthetic import make_chips


@dataclass(frozen=True)
class OutputScore:
    artifact: str
    output: str
    min_cosine: float
    max_abs_error: float
    bound: float
    finite: bool

    @property
    def passed(self) -> bool:
        return self.finite and self.min_cosine >= self.bound

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        finite = "" if self.finite else ", NON-FINITE values"
        return (
            f"{self.artifact:<20} {self.output:<17} min cosine {self.min_cosine:.7f} (bound {self.bound})"
            f"  max abs {self.max_abs_error:.3g}{finite}  {verdict}"
        )


def check_feeds(groups, count: int = 4, seed: int = 7) -> list[OrderedDict[str, np.ndarray]]:
    """Realistic generated chips (one per feed dict) plus one chip of physically plausible extremes:
    S2 DN 65535, S1 linear gamma0 1000 and DEM −500…9000 m side by side, where float16 overflows first."""
    pixels, lonlat, date = make_chips(count, seed=seed)
    extreme = pixels[:1].copy()
    extreme[:, :10, :256] = 65535.0
    extreme[:, 10:12, 256:, :256] = 1000.0
    extreme[:, 12, 256:, 256:] = 9000.0
    extreme[:, 12, :128, 256:] = -500.0
    pixels = np.concatenate([pixels, extreme])
    lonlat = np.concatenate([lonlat, lonlat[:1]])
    date = np.concatenate([date, date[:1]])
    bands = list(bands_of_groups(groups))
    return [
        OrderedDict(pixels=pixels[i : i + 1, bands], lonlat=lonlat[i : i + 1], date=date[i : i + 1])
        for i in range(len(pixels))
    ]


def eager_reference(encoder: Encoder, groups, feeds, patch_embeddings: bool) -> list[dict[str, np.ndarray]]:
    """The training encoder in fp32 with explicit normalisation: what every artifact must reproduce."""
    bands = bands_of_groups(groups)
    results = []
    with torch.no_grad():
        for feed in feeds:
            cube = normalise(torch.from_numpy(feed["pixels"]), bands)
            chip, patches = encoder.embed(
                cube, torch.from_numpy(feed["lonlat"]), torch.from_numpy(feed["date"]), groups, patch_embeddings
            )
            outputs = {"embedding": chip.numpy()}
            if patches is not None:
                outputs["patch_embeddings"] = patches.numpy()
            results.append(outputs)
    return results


def run_with_polygraphy(artifact: Path, feeds) -> list[dict[str, np.ndarray]]:
    """Run an ONNX file on ONNX Runtime's CPU provider through Polygraphy's Comparator."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # per-iteration INFO lines drown the report
    runner = OnnxrtRunner(SessionFromOnnx(str(artifact), providers=["cpu"]), name=artifact.name)
    results = Comparator.run([runner], data_loader=feeds)
    (_, iterations), = results.items()
    return [{name: np.asarray(value) for name, value in iteration.items()} for iteration in iterations]


def run_plan(artifact: Path, feeds) -> list[dict[str, np.ndarray]]:
    """Run a TensorRT plan with the runtime's TensorRT backend (the flavour that built it). Polygraphy's
    TensorRT runner is not used: it reaches TensorRT-RTX only through a process-wide switch."""
    from clay.runtime.engines.choice import open_engine

    with open_engine(artifact, "tensorrt") as engine:
        return [engine.infer(feed["pixels"], feed["lonlat"], feed["date"]) for feed in feeds]


def unchecked_reason(artifact: Path, fmt: ArtifactFormat) -> str | None:
    """Why ``artifact`` cannot be run for the check on this machine (a plan without a GPU it was
    built for), or ``None``."""
    if "tensorrt" not in fmt.runs_on:
        return None
    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.engines.tensorrt_plan import plan_unusable_reason

    reason = plan_unusable_reason(artifact, read_engine_metadata(artifact))
    return reason and f"{reason} (the plan is kept; clay-export --fp16 on a machine with such a GPU builds and checks it)"


def cosine_per_chip(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    b = expected.reshape(expected.shape[0], -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def score(artifact: str, bound: float, actual: list[dict], expected: list[dict]) -> list[OutputScore]:
    scores = []
    for output in expected[0]:
        got = np.concatenate([a[output] for a in actual])
        want = np.concatenate([e[output] for e in expected])
        finite = bool(np.isfinite(got).all())
        cosine = cosine_per_chip(np.nan_to_num(got), want)
        scores.append(
            OutputScore(artifact, output, float(cosine.min()), float(np.abs(got - want).max()), bound, finite)
        )
    return scores


def run_with_runtime(artifact: Path, backend: str, feeds) -> tuple[list[dict[str, np.ndarray]], str]:
    """Run an artifact that Polygraphy has no runner for (OpenVINO) through the runtime's own engine,
    as ``clay-run`` would; returns the outputs and the precision the engine computed in."""
    from clay.runtime.engines.choice import open_engine

    with open_engine(artifact, backend) as engine:
        return [engine.infer(*feed.values()) for feed in feeds], engine.runs_in()


def check_artifact(artifact: Path, fmt: ArtifactFormat, feeds, expected) -> list[OutputScore]:
    """Every output of ``artifact`` scored against ``expected``. An OpenVINO artifact is labelled with
    the precision it ran in here (a CPU without bf16 dot products runs it in float32)."""
    if "openvino-cpu" in fmt.runs_on:
        outputs, runs_in = run_with_runtime(artifact, "openvino-cpu", feeds)
        return score(f"{artifact.name} ({runs_in.split(':')[0]})", fmt.cosine_bound, outputs, expected)
    run = run_plan if "tensorrt" in fmt.runs_on else run_with_polygraphy
    return score(artifact.name, fmt.cosine_bound, run(artifact, feeds), expected)


def band_names(groups) -> tuple[str, ...]:
    return tuple(BAND_NAMES[i] for i in bands_of_groups(groups))
