"""Where the OpenVINO CPU artifacts spend their time: per op class, from OpenVINO's own per-layer
performance counters, against the FLOPs of that class and the CPU's peak (issue 35).

``python -m clay.benchmarks.openvino_layers --size small --batch 2`` exports the bf16 and the int8
IR (random weights, seed 0, all six groups as clay-bench), compiles each as the runtime does
(``INFERENCE_PRECISION_HINT`` bf16, the requested threads, ``PERF_COUNT`` on), runs the same
generated chips through both in interleaved rounds, and sums each executed node's real time per op
class: the blocks' linear layers (OpenVINO's ``FullyConnected``, int8 or bf16 by the kernel it
ran), attention (the fused MHA ``Subgraph`` OpenVINO builds from matmul-softmax-matmul), the int8
artifact's stand-alone quantisers (``FakeQuantize`` OpenVINO could not fuse into a neighbour),
LayerNorm (``MVN``), layout copies (``Reorder``, ``Transpose``) and the rest. The linear layers'
and attention's FLOPs come from the architecture (:func:`.flops.encoder_flops`' terms), so each
class has a rate and a share of the modelled peak: what is left of a 2x target is where the time
is that int8 does not speed up.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import click
import numpy as np
from clay.runtime.bands import GRID_SIZE, GROUP_NAMES
from clay.runtime.console import setup_logging
from clay.runtime.engines.cpu import cpu_info
from clay.runtime.formats import format_named
from clay.training.synthetic import make_chips

from .flops import cpu_peak
from .report import DEFAULT_OUT, git_commit, short_commit, write_results

IRS = {"bf16": format_named("bf16"), "int8": format_named("openvino-int8")}


def op_class(node_type: str, exec_type: str) -> str:
    """The class of one executed OpenVINO node, by its type and the kernel it ran."""
    precision = {"i8": "int8", "u8": "int8"}.get(exec_type.rsplit("_", 1)[-1].lower(), exec_type.rsplit("_", 1)[-1].lower())
    if node_type.startswith("FullyConnected") or node_type == "MatMul":
        return f"linear {precision}"
    if node_type == "Subgraph":
        return f"attention (MHA subgraph) {precision}"
    if node_type == "FakeQuantize":
        return "quantise (stand-alone FakeQuantize)"
    if node_type == "MVN":
        return "LayerNorm (MVN)"
    if node_type in ("Reorder", "Transpose", "Reshape", "Concat", "VariadicSplit", "Split", "Gather", "Slice"):
        return "layout (Reorder/Transpose/split/concat)"
    if node_type == "Convolution":
        return "patch embedding (Convolution, f32)"
    return "elementwise and other"


def class_flops(size, groups, batch: int) -> dict[str, float]:
    """FLOPs per batch of the two classes that hold nearly all of them (``encoder_flops``' terms)."""
    n = len(groups) * GRID_SIZE * GRID_SIZE + 2
    inner, hidden = size.heads * size.dim_head, size.dim * size.mlp_ratio
    linear = 2 * n * size.dim * 3 * inner + 2 * n * inner * size.dim + 2 * 2 * n * size.dim * hidden
    attention = 2 * 2 * n * n * inner
    return {"linear": batch * size.depth * linear, "attention": batch * size.depth * attention}


def compile_profiled(xml: Path, threads: int, chips):
    """The IR compiled as the runtime compiles it, with per-layer counters on, after one warm-up call."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "PERF_COUNT": True}  # fmt: skip
    request = core.compile_model(core.read_model(str(xml)), "CPU", config).create_infer_request()
    request.infer(list(chips))
    return request


def profiled_call(request, chips) -> tuple[float, dict[str, float]]:
    """One call: its wall seconds and the seconds of its executed nodes summed per :func:`op_class`."""
    import time

    start = time.perf_counter()
    request.infer(list(chips))
    wall = time.perf_counter() - start
    totals: dict[str, float] = collections.defaultdict(float)
    for node in request.profiling_info:
        if node.status == node.Status.EXECUTED:
            totals[op_class(node.node_type, node.exec_type)] += node.real_time.total_seconds()
    return wall, dict(totals)


@click.command()
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Default: all cores.")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--engines", type=click.Path(path_type=Path, file_okay=False), default=None,
              help=f"Reuse {IRS['bf16'].file_name} and {IRS['int8'].file_name} from this folder (all six groups, --size).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size: str, batch: int, threads: int | None, rounds: int, engines: Path | None, out: Path) -> None:
    from clay.training.sizes import SIZES

    setup_logging("clay-bench")
    threads = threads or len(os.sched_getaffinity(0))
    chips = tuple(a[:batch] for a in make_chips(batch, seed=42))
    with tempfile.TemporaryDirectory(prefix="clay-ov-layers-") as tmp:
        folder = engines or Path(tmp)
        if engines is None:
            import torch
            from clay.export.artifacts import ExportOptions, export_artifacts
            from clay.training.model import random_clay_mae

            weights = Path(tmp) / "weights.pt"
            model = random_clay_mae(size, seed=0)
            torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, weights)
            click.echo(f"openvino-layers: exporting {size}…", err=True)
            export_artifacts(ExportOptions(out=folder, checkpoint=weights, groups=GROUP_NAMES, bf16_cpu=True,
                                           int8_openvino=True, check=False), log=lambda _: None)  # fmt: skip
        requests = {name: compile_profiled(folder / fmt.file_name, threads, chips) for name, fmt in IRS.items()}
        walls: dict[str, list[float]] = {name: [] for name in IRS}
        classes: dict[str, list[dict[str, float]]] = {name: [] for name in IRS}
        for _ in range(rounds):  # interleaved: one call of each IR per round, the machine's drift shared
            for name, request in requests.items():
                wall, per_class = profiled_call(request, chips)
                walls[name].append(wall)
                classes[name].append(per_class)
    peak = cpu_peak()
    flops = class_flops(SIZES[size], GROUP_NAMES, batch)
    peaks = {"int8": peak.int8_gops, "bf16": peak.bf16_gflops, "f32": peak.fp32_gflops}
    report = {"size": size, "batch": batch, "threads": threads, "rounds": rounds, "commit": git_commit(),
              "cpu": cpu_info().describe(), "peak": peak.__dict__, "class_flops": flops, "irs": {}}  # fmt: skip
    lines = [(f"Clay `{size}`, batch {batch}, {threads} threads, {cpu_info().describe()}, {rounds} interleaved rounds, "
              f"OpenVINO per-layer counters (PERF_COUNT), INFERENCE_PRECISION_HINT bf16; commit "
              f"{short_commit(report['commit'])}. Peaks modelled by clay-bench: {peak.assumption}."), ""]  # fmt: skip
    for name, fmt in IRS.items():
        wall = float(np.median(walls[name]))
        per_class = {k: float(np.median([c.get(k, 0.0) for c in classes[name]])) for k in {k for c in classes[name] for k in c}}
        counted = sum(per_class.values())
        report["irs"][name] = {"wall_s": walls[name], "classes_s": per_class}
        lines += [(f"**{fmt.file_name}**: {batch / wall:.3f} chips/s (median wall {wall:.3f} s per call; "
                   f"the counters sum to {counted:.3f} s)"), "",
                  "| op class | s per call | share | GOP/s (the family's FLOPs / its time) | % of that precision's modelled peak |", "|---|---|---|---|---|"]  # fmt: skip
        # a family's FLOPs over all its classes' time, shown on its largest class (the precision that ran most of it)
        family_of = {k: next((f for f in flops if k.startswith(f)), None) for k in per_class}
        family_seconds = {f: sum(v for k, v in per_class.items() if family_of[k] == f) for f in flops}
        largest = {f: max((k for k in per_class if family_of[k] == f), key=per_class.get, default=None) for f in flops}
        for k, seconds in sorted(per_class.items(), key=lambda kv: -kv[1]):
            family = family_of[k]
            rate = pct = "–"
            if family and largest[family] == k and family_seconds[family] > 0:
                gops = flops[family] / family_seconds[family] / 1e9
                precision = k.rsplit(" ", 1)[-1]
                rate = f"{gops:.0f}"
                pct = f"{100 * gops / peaks[precision]:.0f} % {precision}" if peaks.get(precision) else "–"
            lines.append(f"| {k} | {seconds:.3f} | {100 * seconds / counted:.1f} % | {rate} | {pct} |")
        lines.append("")
    write_results(out, f"openvino-layers-{size}", report, "\n".join(lines))


if __name__ == "__main__":
    main()
