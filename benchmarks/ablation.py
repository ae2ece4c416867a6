"""What each CPU lever buys: one interleaved run, the same chips, one variant per lever.

``python -m clay.benchmarks.ablation --size small --batch 2`` exports the fp32 graph once, derives
each variant from it, and times them all against eager PyTorch (Clay's explicit-softmax fp32, and
the best eager: SDPA + bf16 autocast where the CPU has bf16) in the same rounds. Variants:

- ``fp32``: the exported graph, ONNX Runtime's default graph optimisations;
- ``fp32-fused``: after ONNX Runtime's transformer optimizer (SkipLayerNormalization, bias-GELU and,
  where its pattern matches, attention fusion);
- ``int8-tensor`` / ``int8-channel``: dynamic int8 MatMuls, per-tensor or per-channel weights;
- ``int8-attention``: per-channel, and the attention matmuls in int8 too (softmax in float);
- ``int8-fused``: the fused graph, then dynamic int8 (per-channel);
- ``fp32-mha`` / ``int8-mha``: attention exported as ONNX Runtime's fused MultiHeadAttention kernel
  (no N × N score matrix in memory), fp32 or with dynamic int8 (per-channel) MatMuls;
- ``int8-static``: the MHA graph with static int8 (QDQ, per-channel weights, activation ranges
  calibrated on real chips, see ``real_scenes.assembled_chips``) instead of dynamic;
- ``int8-mha-spin`` / ``int8-mha-1thread``: ONNX Runtime settings on the int8-mha graph (idle worker
  threads spin, ONNX Runtime's default, where the runtime's engine lets them sleep; one intra-op
  thread instead of one per core).

With ``--data ../shared/data`` (needed for ``int8-static``). Before the rounds, a VNNI check times
one int8 MatMul of the encoder's MLP shape alone: its GOP/s against the bf16 peak (what int8 can
reach without VNNI, through 16-bit multiply-adds) and the VNNI int8 peak.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnx
from clay.export.artifacts import ExportOptions, export_artifacts
from clay.export.graph import InferenceEncoder
from clay.export.onnx_export import export_onnx, read_metadata
from clay.runtime.bands import GRID_SIZE, GROUP_NAMES
from clay.runtime.console import setup_logging
from clay.runtime.formats import format_named
from clay.training.model import random_clay_mae
from clay.training.synthetic import make_chips

from .backends import Backend, eager_backends, engine_backend
from .bench import measure
from .flops import cpu_peak, encoder_flops
from .real_scenes import assembled_chips
from .report import DEFAULT_OUT, git_commit, write_results

FP32 = format_named("fp32")  # every variant derives from the exported float32 graph


def fuse(src: Path, dst: Path, size) -> dict[str, int]:
    """ONNX Runtime's transformer fusions; returns the fused-operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="vit", num_heads=size.heads, hidden_size=size.dim, opt_level=1)
    model.save_model_to_file(str(dst))
    copy_metadata(src, dst)
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def copy_metadata(src: Path, dst: Path) -> None:
    """Keep the Clay metadata the runtime checks on a derived graph."""
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(src), load_external_data=False).metadata_props)
    onnx.save(model, str(dst))


class RealChipReader:
    """Calibration data for static int8: one real chip per call, as the runtime would feed it."""

    def __init__(self, chips) -> None:
        self._feeds = iter([{"pixels": p[None], "lonlat": ll[None], "date": d[None]} for p, ll, d in zip(*chips)])

    def get_next(self):
        return next(self._feeds, None)


def quantise_static(src: Path, dst: Path, chips) -> None:
    """Static int8 (QDQ), per-channel weights, activation ranges from real chips (min/max)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), RealChipReader(chips), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])  # fmt: skip
    copy_metadata(src, dst)


def session_backend(name: str, path: Path, threads: int, spinning: bool = False) -> Backend:
    """An ONNX Runtime session with settings other than the runtime engine's (which does not spin)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Backend(f"onnx-{name}", name, "int8",
                   lambda p, ll, d: session.run(["embedding"], {"pixels": p, "lonlat": ll, "date": d})[0])  # fmt: skip


def vnni_check(size, tokens: int, threads: int, folder: Path) -> dict:
    """GOP/s of one dynamic-int8 MatMul shaped like the encoder's MLP up-projection, alone."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    hidden = size.dim * size.mlp_ratio
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size.dim, hidden), np.float32) * 0.02, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp_up",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, size.dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, hidden])], [weight])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "gemm.onnx"))
    quantise(folder / "gemm.onnx", folder / "gemm-int8.onnx", per_channel=True, metadata=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "gemm-int8.onnx"), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((tokens, size.dim), np.float32)
    session.run(None, {"x": x})
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, time.perf_counter() - start)
    ops = 2 * tokens * size.dim * hidden
    return {"shape": f"[{tokens}, {size.dim}] x [{size.dim}, {hidden}]", "gops": ops / best / 1e9}


def quantise(src: Path, dst: Path, per_channel: bool, attention_matmuls: bool = False, metadata: bool = True) -> None:
    """Dynamic int8; ``attention_matmuls`` also quantises q·kᵀ and attention·v (softmax stays float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"MatMulConstBOnly": not attention_matmuls})  # fmt: skip
    if metadata:
        copy_metadata(src, dst)


@click.command()
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--data", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="Real samples (../shared/data) to calibrate int8-static on; without it that variant is left out.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size: str, batch: int, repeats: int, data: Path | None, out: Path) -> None:
    import torch

    setup_logging("clay-bench")
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model = random_clay_mae(size, seed=0)
    with tempfile.TemporaryDirectory(prefix="clay-ablation-") as tmp:
        folder = Path(tmp)
        ckpt = folder / "weights.pt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
        export_artifacts(ExportOptions(out=folder, checkpoint=ckpt, groups=GROUP_NAMES, check=False), log=lambda _: None)
        fp32 = folder / FP32.file_name
        export_onnx(InferenceEncoder(model.encoder, GROUP_NAMES, attention="onnxruntime"), folder / "mha.onnx",
                    read_metadata(fp32))  # fmt: skip
        quantise(folder / "mha.onnx", folder / "int8-mha.onnx", per_channel=True)
        fused_stats = fuse(fp32, folder / "fused.onnx", model.size)
        quantise(fp32, folder / "int8-tensor.onnx", per_channel=False)
        quantise(fp32, folder / "int8-channel.onnx", per_channel=True)
        quantise(fp32, folder / "int8-attention.onnx", per_channel=True, attention_matmuls=True)
        quantise(folder / "fused.onnx", folder / "int8-fused.onnx", per_channel=True)
        static = []
        if data:
            quantise_static(folder / "mha.onnx", folder / "int8-static.onnx",
                            assembled_chips(read_metadata(fp32), data, folder / "linked"))  # fmt: skip
            static = [("int8-static", "int8", "int8-static.onnx")]
        variants = [
            ("fp32", "fp32", FP32.file_name), ("fp32-fused", "fp32", "fused.onnx"),
            ("int8-tensor", "int8", "int8-tensor.onnx"), ("int8-channel", "int8", "int8-channel.onnx"),
            ("int8-attention", "int8", "int8-attention.onnx"),
            ("int8-fused", "int8", "int8-fused.onnx"), ("fp32-mha", "fp32", "mha.onnx"),
            ("int8-mha", "int8", "int8-mha.onnx"), *static,
        ]  # fmt: skip
        backends: list[Backend] = [b for b in eager_backends(model, GROUP_NAMES, "cpu") if b.name != "eager-fp32-sdpa"]
        backends += [engine_backend(f"onnx-{name}", name, precision, folder / file, "onnx-cpu", threads)
                     for name, precision, file in variants]  # fmt: skip
        backends += [session_backend("int8-mha-spin", folder / "int8-mha.onnx", threads, spinning=True),
                      session_backend("int8-mha-1thread", folder / "int8-mha.onnx", 1)]  # fmt: skip
        peak = cpu_peak()
        peaks = {"fp32": peak.fp32_gflops, "bf16": peak.bf16_gflops, "int8": peak.int8_gops}
        flops = encoder_flops(model.size, GROUP_NAMES)
        tokens = batch * (len(GROUP_NAMES) * GRID_SIZE**2 + 2)
        vnni = vnni_check(model.size, tokens, threads, folder) | {"bf16_peak": peak.bf16_gflops, "int8_peak": peak.int8_gops}
        results = measure(backends, make_chips(batch, seed=42), batch, repeats, flops, peaks)
    rows = [r.summary() for r in results]
    report = {"size": size, "batch": batch, "repeats": repeats, "threads": threads, "commit": git_commit(),
              "fused_operators": fused_stats, "cpu": peak.__dict__, "vnni_check": vnni, "results": rows}  # fmt: skip
    lines = [f"Ablation, Clay `{size}`, batch {batch}, {repeats} interleaved rounds, {threads} threads, "
             f"{peak.model}. Fused by ONNX Runtime's optimizer: {fused_stats or 'nothing'}.", "",
             f"VNNI check: one dynamic-int8 MatMul {vnni['shape']} alone runs at {vnni['gops']:.0f} GOP/s; "
             f"without VNNI int8 cannot exceed the bf16 rate ({vnni['bf16_peak']:.0f}), the VNNI peak is "
             f"{vnni['int8_peak']:.0f}.", "",
             "| variant | chips/s | × eager fp32 (Clay) | × best eager | % of peak | min cosine vs eager fp32 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fraction = f"{100 * r['peak_fraction']:.1f}" if r["peak_fraction"] else "–"
        lines.append(f"| {r['backend']} | {r['chips_per_s_median']:.3f} | {r['ratio_vs_baseline_median']:.2f} | "
                     f"{r['ratio_vs_best_eager_median']:.2f} | {fraction} | {r['cosine_min']:.6f} |")  # fmt: skip
    write_results(out, f"ablation-{size}", report, "\n".join(lines))


if __name__ == "__main__":
    main()
