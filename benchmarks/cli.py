"""``clay-bench``: chips per second of every backend against eager PyTorch, in one run, same chips."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click
from clay.runtime.bands import GROUP_NAMES
from clay.runtime.console import setup_logging
from clay.runtime.engines.choice import available_backends, open_engine
from clay.runtime.metadata import package_versions
from clay.training.sizes import V15_SIZES
from clay.training.synthetic import make_chips, write_scene

from . import backends as contenders
from .backends import ARTIFACT_CONTENDERS, OPENVINO_GRAPH_CONTENDERS, contender_format, openvino_graph_backend
from .bench import BASELINE, measure
from .flops import cpu_peak, encoder_flops, gpu_peak
from .report import DEFAULT_OUT, git_commit, write_outputs

ALL_BACKENDS = ("eager-fp32-clay", "eager-fp32-sdpa", "eager-bf16-sdpa", "compiled-bf16-sdpa", "eager-fp16-sdpa",
                "compiled-fp16-sdpa", *ARTIFACT_CONTENDERS, *OPENVINO_GRAPH_CONTENDERS)  # fmt: skip
V0_BENCH_SIZES = ("tiny", "small")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Choice(["clay-v0", "clay-v1.5"]), default="clay-v0", show_default=True,
              help="clay-v1.5: the v1.5 encoder for sentinel-2-l2a (256-px chips), random weights, eager PyTorch "
                   "(the official code path) against its artifacts; writes bench-v1.5-SIZE.* with km²/s too. "
                   "--checkpoint, --engines and --scene are for clay-v0.")
@click.option("--size", type=click.Choice(list(dict.fromkeys([*V0_BENCH_SIZES, *V15_SIZES]))), default="tiny",
              show_default=True,
              help=f"Encoder size: {', '.join(V0_BENCH_SIZES)} for clay-v0; {', '.join(V15_SIZES)} for clay-v1.5.")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, help="Batch sizes (repeatable; default 1 2).")
@click.option("--backends", "names", default=",".join(ALL_BACKENDS), show_default=True,
              help="Comma-separated backends; eager-fp32-clay (the baseline) is always measured.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Interleaved timed rounds.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for every CPU backend (default: all cores).")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Weights to benchmark (default: random initialisation, seed 0 — speed does not depend on training).")
@click.option("--engines", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Reuse artifacts from this folder instead of exporting (must match --size).")
@click.option("--scene", type=click.Path(path_type=Path), default=None, help="A real scene for the end-to-end figure too.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(model, size, batches, names, repeats, threads, checkpoint, engines, scene, out) -> None:
    """Measure eager PyTorch (the baseline), best eager, ONNX Runtime and TensorRT on the same chips.

    A quick look (about half a minute on 2 cores): clay-bench --size tiny --batch 1 --repeats 1
    --backends onnx-cpu-int8

    Writes bench-SIZE.json (everything, with hardware, versions and commit), bench-SIZE.md and
    bench-SIZE.png into --out (bench-SIZE-gpu.* where PyTorch sees a CUDA GPU: the PyTorch rows then
    run on it, in fp16 and bf16 too, against the card's measured matmul rates). Ratios come from
    interleaved rounds: each round times every backend once, and a speed-up is the median over
    rounds of baseline seconds / backend seconds.
    """
    import torch
    from clay.training.checkpoint import load_clay_mae
    from clay.training.model import random_clay_mae

    setup_logging("clay-bench")  # warnings as one line each; advice that does not apply (quantiser) dropped
    batches = tuple(sorted(set(batches))) or (1, 2)
    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    wanted = {n.strip() for n in names.split(",") if n.strip()} | {BASELINE}
    unknown = wanted - set(ALL_BACKENDS)
    if unknown:
        sys.exit(f"clay-bench: unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL_BACKENDS)}")
    if model == "clay-v0" and size not in V0_BENCH_SIZES:
        sys.exit(f"clay-bench: --size {size} is a Clay v1.5 size; clay-v0 is benchmarked at {', '.join(V0_BENCH_SIZES)}")
    if model == "clay-v1.5":
        if checkpoint or engines or scene:
            sys.exit("clay-bench: --checkpoint, --engines and --scene are for --model clay-v0 so far")
        from .v15 import run_bench

        paths = run_bench(size, batches, wanted, repeats, threads, out)
        click.echo(paths["markdown"].read_text())
        for kind, path in paths.items():
            click.echo(f"clay-bench: {kind}: {path}", err=True)
        return
    groups = GROUP_NAMES
    model = load_clay_mae(checkpoint, size) if checkpoint else random_clay_mae(size, seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="clay-bench-") as tmp:
        folder = engines or Path(tmp)
        artifacts_wanted = any(not name.startswith(("eager-", "compiled-")) for name in wanted)
        if engines is None and artifacts_wanted:
            from clay.export.artifacts import ExportOptions, export_artifacts  # not needed for PyTorch alone

            ckpt = Path(tmp) / "weights.pt"
            torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
            gpu_engines = any(b in available_backends() for b in ("onnx-cuda", "tensorrt"))
            click.echo(f"clay-bench: exporting {size} artifacts…", err=True)
            export_artifacts(ExportOptions(out=folder, checkpoint=ckpt, groups=groups, fp16=gpu_engines, int8_cpu=True,
                                           bf16_cpu=True, int8_openvino=True, check=False),
                             log=lambda line: None)  # fmt: skip
        candidates = contenders.eager_backends(model, groups, device) + contenders.artifact_backends(folder, threads, wanted)
        candidates += [openvino_graph_backend(n, folder, threads) for n in OPENVINO_GRAPH_CONTENDERS if n in wanted]
        candidates = [b for b in candidates if b.name in wanted]
        peak = cpu_peak()
        gpu = gpu_peak() if device == "cuda" else None
        if gpu:
            peaks = {"fp32": gpu.fp32_gflops, "fp16": gpu.fp16_gflops, "bf16": gpu.bf16_gflops}
        else:
            peaks = {"fp32": peak.fp32_gflops, "bf16": peak.bf16_gflops, "int8": peak.int8_gops}
        flops = encoder_flops(model.size, groups)
        chips = make_chips(max(batches), seed=42)
        results = []
        for batch in batches:
            click.echo(f"clay-bench: batch {batch}, {repeats} rounds…", err=True)
            results += measure(candidates, chips, batch, repeats, flops, peaks)
        precision = {b.name: b.precision for b in candidates}
        rows = [r.summary() | {"precision": precision[r.backend]} for r in results]
        # the end-to-end figure runs the fastest artifact as clay-run would, with an accurate result
        shipped = [r for r in rows if r["backend"] in ARTIFACT_CONTENDERS and r["cosine_min"] >= contender_format(r["backend"]).cosine_bound]
        fastest = max(shipped, key=lambda r: r["chips_per_s_median"], default=None)
        e2e = []
        if fastest:
            from .throughput import end_to_end  # the GeoTIFF stack, only for this figure

            engine = open_engine(folder / contender_format(fastest["backend"]).file_name,
                                 fastest["backend"].rsplit("-", 1)[0], threads)  # fmt: skip
            batch = max(batches)
            generated = Path(tmp) / "generated-scene.tif"
            width = 512 * 2 * batch  # two full batches of chips in one row
            write_scene(generated, width, 512, seed=5)
            click.echo("clay-bench: end to end…", err=True)
            e2e.append(end_to_end(engine, [generated], batch, label=f"generated {width}×512 scene"))
            if scene:
                e2e.append(end_to_end(engine, [scene], batch, label=str(scene)))
    report = {
        "size": size, "groups": list(groups), "flops_per_chip": flops, "batches": list(batches), "repeats": repeats,
        "threads": threads, "weights": str(checkpoint) if checkpoint else "random initialisation (seed 0)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": {"cpu": asdict(peak), "gpu": asdict(gpu) if gpu else None, "platform": platform.platform(),
                    "python": platform.python_version(), "device": gpu.name if gpu else "cpu"},
        "versions": package_versions(),
        "backends": [{"name": b.name, "description": b.description, "precision": b.precision, "absent": b.absent}
                     for b in candidates],
        "results": rows, "end_to_end": e2e,
    }  # fmt: skip
    paths = write_outputs(report, out)
    click.echo(paths["markdown"].read_text())
    for kind, path in paths.items():
        click.echo(f"clay-bench: {kind}: {path}", err=True)


if __name__ == "__main__":
    main()
