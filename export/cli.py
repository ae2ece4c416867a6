"""``clay-export``: the Clay encoder as ONNX (fp32, fp16, int8), FP16 TensorRT and bf16 OpenVINO IR, checked."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from clay.runtime.bands import GROUP_NAMES, parse_groups
from clay.runtime.console import setup_logging
from clay.runtime.formats import FORMATS
from clay.runtime.resampling import RESAMPLING
from clay.runtime.sensors import CONVENTION_HELP, CONVENTIONS, SENSORS, SensorError, parse_sensors
from clay.training.sizes import SIZES, V15_SIZES

from .tensorrt_build import TARGET_HELP, BatchProfile, parse_targets


def _written_by(flag: str) -> str:
    return ", ".join(f"{f.file_name} ({f.summary})" for f in FORMATS if f.flag == flag)


def _bounds() -> str:
    return ", ".join(f"{f.cosine_bound} ({f.file_name})" for f in FORMATS)


DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "clay" / "tensorrt-timing.cache"


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=f"Cosine bounds: {_bounds()}.")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False),
              help="Clay weights: the published Clay v0 or Clay v1.5 checkpoint (recognised from its weights), a "
                   "clay-train checkpoint or a bare state dict. Default: the bundled demo weights (tiny, S2 only, trained "
                   "on one scene; not Clay v0).")
@click.option("--size", type=click.Choice(list(dict.fromkeys([*SIZES, *V15_SIZES]))),
              help=f"Model size ({', '.join(SIZES)} for Clay v0; {', '.join(V15_SIZES)} for Clay v1.5); inferred from "
                   "the checkpoint when omitted.")
@click.option("--random-weights", is_flag=True, help="Export a randomly initialised model (speed tests only).")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="Directory the artifacts are written into.")
@click.option("--groups", default=None,
              help=f"Band groups the engine takes ({','.join(GROUP_NAMES)}); the pixels input holds only their "
                   "bands, in spec order. Default: the groups the checkpoint records it was trained on (clay-train's "
                   "checkpoints), else all six (the published Clay v0 file); the demo weights' S2 groups when they are used.")
@click.option("--sensor", "sensors", default=None,
              help="Clay v1.5: the sensors to export, comma-separated metadata.yaml names (" + ", ".join(SENSORS) + "); "
                   "one artifact set each, in OUT/<sensor>/. NAME+BAND+BAND... exports a band subset of the sensor "
                   "(sentinel-2-l2a+B02+B03+B04+B08, in OUT/sentinel-2-l2a+B02+B03+B04+B08/): Clay v1.5's patch-embedding "
                   "weights depend on which bands are present, so each subset is its own artifact set, and clay-run picks "
                   "per scene the largest set whose bands the scene has. Default: sentinel-2-l2a.")
@click.option("--chip-size", type=int, default=None,
              help="Clay v1.5: chip side in pixels, a multiple of 8 (default 256, the size v1.5 was trained on).")
@click.option("--conventions", "convention", type=click.Choice(CONVENTIONS), default="training", show_default=True,
              help="Clay v1.5: how lon/lat enter the model. training: " + CONVENTION_HELP["training"] + ". tutorials: "
                   + CONVENTION_HELP["tutorials"] + ". Recorded in the engine's metadata.")
@click.option("--fp16", is_flag=True, help="Also write " + _written_by("--fp16") + ".")
@click.option("--int8-cpu", is_flag=True, help="Also write " + _written_by("--int8-cpu") + ".")
@click.option("--bf16-cpu", is_flag=True, help="Also write " + _written_by("--bf16-cpu") + " (needs the openvino extra).")
@click.option("--int8-openvino", is_flag=True,
              help="Also write " + _written_by("--int8-openvino") + " (needs the int8-openvino extra; calibration reads "
                   "the bundled demo scene, so engines with none of its Sentinel-2 bands (Clay v0 sar or dem alone, Clay v1.5 "
                   "sensors other than sentinel-2-l2a) get no such artifact).")
@click.option("--patch-embeddings", is_flag=True, help="Add the patch_embeddings output: [B, G, 16, 16, dim] for Clay v0 (one per band group, 512 px "
                   "chips), [B, 1, S/8, S/8, dim] for Clay v1.5 (S: --chip-size).")
@click.option("--batch", default="1:8:32", show_default=True, help="TensorRT optimisation profile MIN:OPT:MAX.")
@click.option("--compute-capability", default="ampere+", show_default=True,
              help=f"GPUs the plan is built for: {TARGET_HELP}. TensorRT-RTX has no 9.0 (H100/H200).")
@click.option("--timing-cache", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_TIMING_CACHE,
              show_default=True, help="Persistent timing cache of standard TensorRT (read and updated; TensorRT-RTX has none).")
@click.option("--no-check", is_flag=True, help="Skip the comparison of every artifact against eager PyTorch fp32.")
@click.option("--triton-repository", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write a Triton model repository here: clay_trt (a plan built by standard TensorRT) and clay_onnx "
                   "(the ONNX Runtime CUDA artifact, else the float32 graph), each with its config.pbtxt; for Clay v1.5 "
                   "one pair per sensor, named clay_v1_5_<sensor>_trt and _onnx (sentinel-2-l2a: clay_v1_5_sentinel_2_l2a_onnx).")
@click.option("--resampling", type=click.Choice(RESAMPLING), default=None,
              help="The resampling the weights were trained with (bands off the chip grid brought onto it), recorded in "
                   "the engine for clay-run. Default: the checkpoint's record, else bilinear for the demo weights and "
                   "clay-train checkpoints (this runtime's reader), else nearest (Clay v0: stackstac's default).")
def main(checkpoint, size, random_weights, out, groups, sensors, chip_size, convention, fp16, int8_cpu, bf16_cpu,
         int8_openvino, patch_embeddings, batch, compute_capability, timing_cache, no_check, triton_repository, resampling) -> None:  # fmt: skip
    """Export the Clay encoder with its normalisation folded in: raw pixels, lon/lat and date in.

    Unless --no-check, every artifact is compared with eager PyTorch fp32 on generated chips and on a
    chip of physically plausible extremes; the command fails (writing nothing) when any chip's cosine
    is below its format's bound (listed at the end of --help).
    """
    setup_logging("clay-export")
    try:
        sensor_names = parse_sensors(sensors) if sensors is not None else ()
    except SensorError as exc:
        click.echo(f"clay-export: {exc}", err=True)
        sys.exit(2)
    from .artifacts import (  # torch: after --help and bad flags
        ExportError,
        ExportOptions,
        RefusedInput,
        export_artifacts,
    )

    try:
        options = ExportOptions(
            out=out, checkpoint=checkpoint, size=size, random_weights=random_weights,
            groups=parse_groups(groups) if groups else (),
            fp16=fp16, int8_cpu=int8_cpu, bf16_cpu=bf16_cpu, int8_openvino=int8_openvino, patch_embeddings=patch_embeddings,
            batch=BatchProfile.parse(batch), compute_capability=parse_targets(compute_capability),
            timing_cache=timing_cache, check=not no_check,
            triton_repository=triton_repository, sensors=sensor_names, chip_size=chip_size, convention=convention,
            resampling=resampling,
        )  # fmt: skip
        if timing_cache is not None:
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
        report = export_artifacts(options, log=lambda line: click.echo(line, err=True))
    except RefusedInput as exc:
        click.echo(f"clay-export: {exc}", err=True)
        sys.exit(2)
    except (ExportError, ValueError) as exc:
        sys.exit(f"clay-export: {exc}")
    for line in report.summary + report.notes:
        click.echo(f"clay-export: {line}", err=True)
    for path in report.artifacts:
        click.echo(str(path))


if __name__ == "__main__":
    main()
