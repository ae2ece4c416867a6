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
  (no N × N score matrix in memory), fp32 or with dynamic int8 (per-channel) MatMuls.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import click
import onnx

from clay.export.artifacts import ExportOptions, export_artifacts
from clay.export.graph import InferenceEncoder
from clay.export.onnx_export import export_onnx, read_metadata
from clay.training.bands import GROUP_NAMES
from clay.training.model import ClayMAE
from clay.training.synthetic import make_chips

from .backends import Backend, eager_backends, engine_backend
from .bench import measure
from .cli import DEFAULT_OUT, git_commit
from .flops import cpu_peak, encoder_flops


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


def quantise(src: Path, dst: Path, per_channel: bool, attention_matmuls: bool = False) -> None:
    """Dynamic int8; ``attention_matmuls`` also quantises q·kᵀ and attention·v (softmax stays float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Attention"],
                     extra_options={"MatMulConstBOnly": not attention_matmuls})  # fmt: skip
    copy_metadata(src, dst)


@click.command()
@click.option("--size", type=click.Choice(["tiny", "small"]), default="small", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(size: str, batch: int, repeats: int, out: Path) -> None:
    import torch

    logging.getLogger().setLevel(logging.ERROR)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ClayMAE(size).eval()
    with tempfile.TemporaryDirectory(prefix="clay-ablation-") as tmp:
        folder = Path(tmp)
        ckpt = folder / "weights.pt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
        export_artifacts(ExportOptions(out=folder, checkpoint=ckpt, groups=GROUP_NAMES, check=False), log=lambda _: None)
        fp32 = folder / "clay.onnx"
        export_onnx(InferenceEncoder(model.encoder, GROUP_NAMES, fused_attention=True), folder / "mha.onnx",
                    read_metadata(fp32))  # fmt: skip
        quantise(folder / "mha.onnx", folder / "int8-mha.onnx", per_channel=True)
        fused_stats = fuse(fp32, folder / "fused.onnx", model.size)
        quantise(fp32, folder / "int8-tensor.onnx", per_channel=False)
        quantise(fp32, folder / "int8-channel.onnx", per_channel=True)
        quantise(fp32, folder / "int8-attention.onnx", per_channel=True, attention_matmuls=True)
        quantise(folder / "fused.onnx", folder / "int8-fused.onnx", per_channel=True)
        variants = [
            ("fp32", "fp32", "clay.onnx"), ("fp32-fused", "fp32", "fused.onnx"),
            ("int8-tensor", "int8", "int8-tensor.onnx"), ("int8-channel", "int8", "int8-channel.onnx"),
            ("int8-attention", "int8", "int8-attention.onnx"),
            ("int8-fused", "int8", "int8-fused.onnx"), ("fp32-mha", "fp32", "mha.onnx"),
            ("int8-mha", "int8", "int8-mha.onnx"),
        ]  # fmt: skip
        backends: list[Backend] = [b for b in eager_backends(model, GROUP_NAMES, "cpu") if b.name != "eager-fp32-sdpa"]
        backends += [engine_backend(f"onnx-{name}", name, precision, folder / file, "onnx-cpu", threads)
                     for name, precision, file in variants]  # fmt: skip
        peak = cpu_peak()
        peaks = {"fp32": peak.fp32_gflops, "bf16": peak.bf16_gflops, "int8": peak.int8_gops}
        flops = encoder_flops(model.size, GROUP_NAMES)
        results = measure(backends, make_chips(batch, seed=42), batch, repeats, flops, peaks)
    rows = [r.summary() for r in results]
    report = {"size": size, "batch": batch, "repeats": repeats, "threads": threads, "commit": git_commit(),
              "fused_operators": fused_stats, "cpu": peak.__dict__, "results": rows}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ablation-{size}.json").write_text(json.dumps(report, indent=2))
    lines = [f"Ablation, Clay `{size}`, batch {batch}, {repeats} interleaved rounds, {threads} threads, "
             f"{peak.model}. Fused by ONNX Runtime's optimizer: {fused_stats or 'nothing'}.", "",
             "| variant | chips/s | × eager fp32 (Clay) | × best eager | % of peak | min cosine vs eager fp32 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fraction = f"{100 * r['peak_fraction']:.1f}" if r["peak_fraction"] else "–"
        lines.append(f"| {r['backend']} | {r['chips_per_s_median']:.3f} | {r['ratio_vs_baseline_median']:.2f} | "
                     f"{r['ratio_vs_best_eager_median']:.2f} | {fraction} | {r['cosine_min']:.6f} |")  # fmt: skip
    (out / f"ablation-{size}.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
