"""The benchmark's outputs: one JSON with everything, a Markdown table, and a bar chart."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import click
from clay.runtime.engines.cpu import cpu_info
from clay.runtime.options import cpu_count

#: Where results go unless told: a folder in the current directory (never inside the installed
#: package). The repository's committed results are refreshed with ``--out benchmarks/results``.
DEFAULT_OUT = Path("bench-results")


def git_commit() -> str:
    """The commit the measured code came from, marked ``+modified`` when the tree differs from it
    (a copy of a working tree keeps an older HEAD), so a result never claims code it did not run."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measured_on() -> dict[str, object]:
    """Where and when a result was measured, for the head of its record: ``cpu`` (model and the flags
    that pick its inference path), ``cores`` (those this process may use), ``commit``
    (:func:`git_commit`) and ``date`` (UTC, ISO 8601)."""
    return {"cpu": cpu_info().describe(), "cores": cpu_count(), "commit": git_commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def write_results(out: Path, stem: str, record: dict, text: str) -> None:
    """A benchmark's results: ``out/stem.json`` (the whole record), ``out/stem.md`` (``text``, its
    tables) and ``text`` on standard output."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text.rstrip("\n") + "\n")
    click.echo(text)


def stage_line(row: dict) -> str:
    """Where a pipeline run's time went, stage by stage (seconds summed over threads)."""
    return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in row["stages"].items())


def short_commit(commit: str) -> str:
    return commit[:10] + ("+modified" if commit.endswith("+modified") else "")


def markdown(report: dict) -> str:
    machine = report["machine"]
    gpu = machine.get("gpu")
    where = (
        f"{gpu['name']} (PyTorch on CUDA; chips copied in and embeddings copied out inside every timed call)"
        if gpu
        else f"{machine['cpu']['model']} ({machine['cpu'].get('features') or 'flags not recorded'}) at "
        f"{machine['cpu']['mhz'] / 1000:.2f} GHz ({machine['cpu']['clock_source']}), {machine['cpu']['cores']} threads"
    )
    lines = [
        f"Clay `{report['size']}` encoder ({report['flops_per_chip'] / 1e9:.1f} GFLOP per chip), {where}, "
        f"{report['repeats']} interleaved rounds, commit {short_commit(report['commit'])}, {report['date']}.",
        "",
        "| backend | batch | chips/s (median, min–max) | × eager fp32 (Clay) | × best eager | GFLOP/s | % of peak | min cosine | max abs err | memory MB (call / process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        fraction = f"{100 * r['peak_fraction']:.1f} % {r['precision']}" if r.get("peak_fraction") else "–"
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['chips_per_s_median']:.3f} ({r['chips_per_s_min']:.3f}–{r['chips_per_s_max']:.3f}) "
            f"| {r['ratio_vs_baseline_median']:.2f} | {r['ratio_vs_best_eager_median']:.2f} ({r['best_eager']}) "
            f"| {r['gflops']:.1f} | {fraction} | {r['cosine_min']:.6f} | {r['max_abs_error']:.2g} | {r['call_memory_mb']:.0f} / {r['peak_rss_mb']:.0f} |"
        )
    if gpu:
        peaks = (f"Peak rates: fp32 {gpu['fp32_gflops']:.0f} GFLOP/s, fp16 {gpu['fp16_gflops']:.0f}, "
                 f"bf16 {gpu['bf16_gflops']:.0f} ({gpu['assumption']}). Memory: host RSS, not GPU memory")  # fmt: skip
    else:
        peaks = (f"Peak rates: fp32 {machine['cpu']['fp32_gflops']:.0f} GFLOP/s, bf16 "
                 f"{machine['cpu']['bf16_gflops'] or 0:.0f}, int8 {machine['cpu']['int8_gops'] or 0:.0f} GOP/s "
                 f"({machine['cpu']['assumption']}). Memory")  # fmt: skip
    lines += ["", peaks + ": the rise in process RSS during the backend's warm-up call / the process RSS at "
              "that peak. Weights: " + report["weights"] + "."]
    lines += ["", best_eager_line(report["results"])]
    absent = [b for b in report["backends"] if b["absent"]]
    if absent:
        lines += ["", "Absent here: " + "; ".join(f"{b['name']} ({b['absent']})" for b in absent) + "."]
    e2e = report.get("end_to_end") or []
    for row in e2e:
        lines.append(
            f"\nEnd to end ({row['scene']}, {row['chips']} chips, {row['backend']}, batch {row['batch']}): "
            f"{row['pipeline_chips_per_s']:.3f} chips/s through clay-run's pipeline vs {row['engine_chips_per_s']:.3f} "
            f"for the engine alone = {row['percent']:.0f} %"
            + (f"; time in: {stage_line(row)} ({row['readers']} readers)." if row.get("stages") else ".")
        )
    return "\n".join(lines) + "\n"


def best_eager_line(results: list[dict]) -> str:
    """Which PyTorch variants could be "best eager": only those meeting the int8 artifact's cosine bound."""
    from .bench import BEST_EAGER_BOUND

    excluded = sorted({name for r in results for name in r.get("best_eager_excluded", [])})
    return (f"Best eager: the fastest strong PyTorch variant of each batch among those with min cosine ≥ "
            f"{BEST_EAGER_BOUND} against eager fp32 (the int8 artifact's bound); "
            + (f"not counted here: {'; '.join(excluded)}." if excluded else "every strong variant met it here."))  # fmt: skip


def bar_chart(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    batches = sorted({r["batch"] for r in results})
    names = list(dict.fromkeys(r["backend"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(batches)
    for i, batch in enumerate(batches):
        rows = {r["backend"]: r for r in results if r["batch"] == batch}
        xs = [k + i * width for k in range(len(names))]
        axes[0].bar(xs, [rows[n]["chips_per_s_median"] if n in rows else 0 for n in names], width, label=f"batch {batch}")
        axes[1].bar(xs, [rows[n]["ratio_vs_baseline_median"] if n in rows else 0 for n in names], width, label=f"batch {batch}")
    for ax, title in zip(axes, ("chips per second (median)", "speed-up vs eager fp32 (Clay), same rounds")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    machine = report["machine"]
    where = machine["gpu"]["name"] if machine.get("gpu") else f"{machine['cpu']['model']} ({machine['cpu']['cores']} threads)"
    fig.suptitle(f"Clay {report['size']} on {where}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def write_outputs(report: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{report['size']}" + ("-gpu" if report["machine"].get("gpu") else "")
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(report))
    bar_chart(report, paths["png"])
    return paths
