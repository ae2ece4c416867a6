"""What clay-search costs and finds: ``python -m clay.benchmarks.search [--rows 10000 --rows 1000000]``.

Generated vectors (``dim`` 1024: the published Clay v1.5's width; the published Clay v0's is 768), clustered as embeddings of a
scene archive are (``rows / 100`` centres, Gaussian spread, unit-normalised), for each size:

- **build**: seconds to write the LanceDB table and train its IVF-PQ index (:mod:`clay.runtime.search.index`);
- **latency**: per query, median and 95th percentile, of the exact search (numpy, every row) and of
  the index at the runtime's ``nprobes`` (and at the other ``--nprobes`` asked for), one query at a time;
- **recall@10** of the index against the exact top 10, over ``--queries`` queries (rows of the
  archive moved by a little noise, so each has neighbours besides itself).

Writes ``search.json`` and ``.md`` into ``--out``. Memory: the vectors (rows × dim × 4 bytes) twice
over while the index is built.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
from clay.runtime.search import index as search_index
from clay.runtime.search.archive import Archive

from .report import DEFAULT_OUT, measured_on, write_results


def clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[rows, dim]`` unit float32 vectors around ``max(8, rows // 100)`` Gaussian centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(8, rows // 100), dim)).astype(np.float32)
    out = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 65536):  # in blocks: a 10⁶ × 1024 draw at once would need float64 twice
        stop = min(rows, start + 65536)
        out[start:stop] = centres[rng.integers(0, len(centres), stop - start)]
        out[start:stop] += 0.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def synthetic_archive(units: np.ndarray, folder: Path) -> Archive:
    """An archive of the vectors alone (the index needs no geometry)."""
    archive = Archive([folder / "generated.parquet"], "chips", "generated", units.shape[1], pa.table({"row": np.arange(len(units))}),
                      f"generated-{len(units)}-{units.shape[1]}")  # fmt: skip
    archive._units = units
    return archive


def measure(rows: int, dim: int, queries: int, nprobes: list[int]) -> dict:
    units = clustered(rows, dim)
    rng = np.random.default_rng(1)
    asked = units[rng.choice(rows, queries, replace=False)] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
    asked /= np.linalg.norm(asked, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="clay-search-bench-") as tmp:
        archive = synthetic_archive(units, Path(tmp))
        exact = search_index.ExactIndex(archive)
        latencies, truth = [], []
        for q in asked:
            start = time.perf_counter()
            truth.append(exact.candidates(q, 10)[0])
            latencies.append(time.perf_counter() - start)
        index = search_index.LanceIndex(archive, Path(tmp) / "index")
        record = {"rows": rows, "dim": dim, "queries": queries, "build_s": index.built_s,
                  "partitions": search_index.partitions(rows) if index.indexed else 0,
                  "exact": {"p50_ms": 1e3 * statistics.median(latencies), "p95_ms": 1e3 * float(np.percentile(latencies, 95))},
                  "index": []}  # fmt: skip
        for probes in dict.fromkeys([index.nprobes, *nprobes]):
            index.nprobes = probes
            found, latencies = [], []
            for q in asked:
                start = time.perf_counter()
                found.append(index.candidates(q, 10)[0])
                latencies.append(time.perf_counter() - start)
            recall = statistics.mean(len(set(f) & set(t)) / 10 for f, t in zip(found, truth))
            record["index"].append({"nprobes": probes, "refine_factor": search_index.REFINE_FACTOR, "recall_at_10": recall,
                                    "p50_ms": 1e3 * statistics.median(latencies),
                                    "p95_ms": 1e3 * float(np.percentile(latencies, 95))})  # fmt: skip
    return record


def markdown(report: dict) -> str:
    lines = [f"clay-search on {report['cpu']} ({report['cores']} cores), commit {report['commit']}, {report['date']}",
             "", "| rows | dim | build (s) | exact p50 / p95 (ms) | index nprobes | recall@10 | index p50 / p95 (ms) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in report["sizes"]:
        for k, run in enumerate(size["index"]):
            head = (f"{size['rows']:,} | {size['dim']} | {size['build_s']:.1f} | "
                    f"{size['exact']['p50_ms']:.1f} / {size['exact']['p95_ms']:.1f}") if k == 0 else " | | |"  # fmt: skip
            lines.append(f"| {head} | {run['nprobes']} of {size['partitions']} | {run['recall_at_10']:.3f} | "
                         f"{run['p50_ms']:.1f} / {run['p95_ms']:.1f} |")  # fmt: skip
    return "\n".join(lines)


@click.command()
@click.option("--rows", "sizes", type=click.IntRange(min=1), multiple=True, default=(10_000,), show_default=True)
@click.option("--dim", type=click.IntRange(min=8), default=1024, show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--nprobes", type=click.IntRange(min=1), multiple=True, help="More probe counts to measure.")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True)
def main(sizes, dim, queries, nprobes, out) -> None:
    report = {**measured_on(), "sizes": []}
    for rows in sizes:
        click.echo(f"{rows} rows × {dim}", err=True)
        report["sizes"].append(measure(rows, dim, queries, list(nprobes)))
        report["sizes"][-1]["note"] = f"vectors {rows * dim * 4 / 2**30:.2f} GiB; ~{math.sqrt(rows):.0f} partitions"
    write_results(out, "search", report, markdown(report))


if __name__ == "__main__":
    main()
