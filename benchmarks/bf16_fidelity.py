"""bf16 on the CPU, accuracy (issue 27): every reduced-precision CPU path against eager fp32 on the
chips the issue names, per chip.

``python -m clay.benchmarks.bf16_fidelity --size small`` exports the demo weights (``tiny``, S2
groups) and a randomly initialised ``size`` model (same groups) with ``--int8-cpu --bf16-cpu``, then
scores against eager fp32 PyTorch (Clay's explicit-softmax path): the bf16 IR on OpenVINO (float32
pins), the float32 graph on OpenVINO with the bf16 hint and no pins (the naive path), eager SDPA
under bf16 autocast, and the int8 artifact on ONNX Runtime, on three chip sets: the export check's
generated chips, its extreme chip (S2 DN 65535) and every chip of the bundled demo scene T48QUE.
The table says which CPU (and its AMX / AVX512-BF16 flags) and what precision OpenVINO ran in: on a
CPU without bf16 dot products every OpenVINO row is float32 and proves nothing about bf16.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np
from clay.export import check
from clay.export.artifacts import ExportOptions, export_artifacts
from clay.runtime.cli import DEMO_SCENE
from clay.runtime.engines.cpu import cpu_info
from clay.runtime.engines.choice import open_engine
from clay.runtime.scenes.discovery import discover_scenes
from clay.runtime.formats import format_named

from .backends import Backend, eager_backend, engine_backend, openvino_graph_backend
from .bench import cosine_rows
from .real_scenes import real_chips
from .report import DEFAULT_OUT, git_commit, short_commit, write_results

GROUPS = ("rgb", "rededge", "nir", "swir")  # the demo scene's and the demo weights' groups
BF16, INT8 = format_named("bf16"), format_named("int8")


def chip_sets(metadata) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The export check's generated chips, its extreme chip, and the demo scene's chips."""
    feeds = check.check_feeds(GROUPS)
    stacked = [np.concatenate([f[k] for f in feeds]) for k in ("pixels", "lonlat", "date")]
    return {"export check, generated": tuple(a[:-1] for a in stacked),
            "export check, extreme (S2 DN 65535)": tuple(a[-1:] for a in stacked),
            "demo scene T48QUE": real_chips(discover_scenes([DEMO_SCENE])[0], metadata)}  # fmt: skip


def contenders(model, folder: Path, threads: int) -> list[Backend]:
    import torch

    return [
        engine_backend("openvino-cpu-bf16", "the bf16 IR, float32 pins", "bf16", folder / BF16.file_name,
                       "openvino-cpu", threads),
        openvino_graph_backend("openvino-onnx-bf16", folder, threads),
        Backend("eager-bf16-sdpa", "PyTorch eager, SDPA + bf16 autocast", "bf16",
                eager_backend(model, GROUPS, "sdpa", torch.bfloat16, "cpu")),
        engine_backend("onnx-cpu-int8", "the int8 artifact", "int8", folder / INT8.file_name, "onnx-cpu", threads),
    ]  # fmt: skip


def score(model, folder: Path, label: str, threads: int, only: set[str] | None = None) -> list[dict]:
    """Every contender (or the ``only`` ones) on every chip set of one model, chip by chip (batch 1,
    as the export check runs)."""
    reference = eager_backend(model, GROUPS, "explicit", None, "cpu")
    with open_engine(folder / BF16.file_name, "openvino-cpu", threads) as engine:
        ran, metadata = engine.runs_in(), engine.metadata
    sets = chip_sets(metadata)

    def chip_by_chip(run, chips) -> np.ndarray:
        return np.concatenate([run(*(a[i : i + 1] for a in chips)) for i in range(len(chips[0]))])

    expected = {name: chip_by_chip(reference, chips) for name, chips in sets.items()}
    rows = []
    for backend in contenders(model, folder, threads):
        if only is not None and backend.name not in only:
            continue
        for name, chips in sets.items():
            row = {"weights": label, "contender": backend.name, "what": backend.description, "chips": name,
                   "count": len(chips[0]), "absent": backend.absent, "openvino_ran": ran}  # fmt: skip
            if backend.run is not None:
                got = chip_by_chip(backend.run, chips)
                row |= {"min_cosine": float(cosine_rows(got, expected[name]).min()),
                        "max_abs_error": float(np.abs(got - expected[name]).max())}  # fmt: skip
            rows.append(row)
    return rows


@click.command()
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True,
              help="Size of the randomly initialised model scored beside the demo weights.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size: str, out: Path) -> None:
    import torch
    from clay.training.checkpoint import DEMO_WEIGHTS, load_clay_mae
    from clay.training.model import random_clay_mae

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clay-bf16-") as tmp:
        random_weights = Path(tmp) / "random.pt"
        random_model = random_clay_mae(size, seed=0)
        torch.save({"state_dict": {f"model.{k}": v for k, v in random_model.state_dict().items()}}, random_weights)
        for label, weights, model in (("demo weights (tiny)", DEMO_WEIGHTS, load_clay_mae(DEMO_WEIGHTS)),
                                      (f"random {size} (seed 0)", random_weights, random_model)):  # fmt: skip
            folder = Path(tmp) / label.split()[0]
            click.echo(f"bf16-fidelity: exporting {label}…", err=True)
            export_artifacts(ExportOptions(out=folder, checkpoint=weights, groups=GROUPS, int8_cpu=True, bf16_cpu=True,
                                           check=False), log=lambda _: None)  # fmt: skip
            rows += score(model, folder, label, threads)
    cpu = cpu_info().describe()
    report = {"cpu": cpu, "threads": threads, "commit": git_commit(), "reference": "eager fp32 PyTorch, explicit softmax",
              "rows": rows}  # fmt: skip
    lines = [f"Per-chip min cosine and max abs error against eager fp32 PyTorch, {cpu}, {threads} threads, "
             f"OpenVINO ran in {rows[0]['openvino_ran']}; commit {short_commit(report['commit'])}.", "",
             "| weights | contender | chips | count | min cosine | max abs err |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        figures = (f"{r['min_cosine']:.6f} | {r['max_abs_error']:.2g}" if r["absent"] is None
                   else f"absent: {r['absent']} | –")  # fmt: skip
        lines.append(f"| {r['weights']} | {r['contender']} | {r['chips']} | {r['count']} | {figures} |")
    write_results(out, "bf16-fidelity", report, "\n".join(lines))


if __name__ == "__main__":
    main()
