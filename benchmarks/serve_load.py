"""A bounded load test of ``clay-serve``: concurrent clients for a fixed time, on loopback.

``python -m clay.benchmarks.serve_load --engine ENGINE [--clients 16] [--seconds 10] [--max-batch 8]``
starts ``clay-serve`` on free loopback ports, measures the engine in this process at the same
batch size, then runs the clients (tritonclient over HTTP with binary tensors, one chip per
request) and reports throughput, p50/p99 latency, errors and the batch sizes the server ran (from
its Prometheus metrics). Writes ``serve-load-cpu-<engine>.json`` and ``.md``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
from clay.runtime import ClayEmbedder
from clay.runtime.bands import BAND_NAMES
from clay.training.synthetic import make_chips

from .report import DEFAULT_OUT, measured_on, write_results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(engine: Path, *args: str, timeout: float = 90, ports: tuple[int, int] | None = None) -> Iterator[dict]:
    """``clay-serve`` in a subprocess on loopback (``ports``: HTTP and gRPC, default two free ones),
    ready when yielded, stopped after (SIGTERM, then SIGKILL after 20 s)."""
    http, grpc = ports or (free_port(), free_port())
    command = [sys.executable, "-m", "clay.runtime.serve", "--engine", str(engine), "--http-port", str(http),
               "--grpc-port", str(grpc), *args]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"clay-serve exited with {process.returncode}: {''.join(log)[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"clay-serve was not ready within {timeout:.0f} s: {''.join(log)[-2000:]}")
            time.sleep(0.2)
        yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "process": process, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chips_for(embedder: ClayEmbedder, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixels, lonlat, date = make_chips(count, seed=seed)
    return pixels[:, [BAND_NAMES.index(b) for b in embedder.metadata.bands]], lonlat, date


def in_process_rate(embedder: ClayEmbedder, batch: int, seconds: float = 4.0) -> float:
    """Chips/s of ``ClayEmbedder.embed`` at ``batch`` chips per call, in this process."""
    pixels, lonlat, date = chips_for(embedder, batch)
    embedder.embed(pixels, lonlat, date)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed(pixels, lonlat, date)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def load(http: str, chips: tuple[np.ndarray, np.ndarray, np.ndarray], clients: int, seconds: float,
         expected: np.ndarray | None = None) -> dict:  # fmt: skip
    """``clients`` threads each sending one-chip requests back to back for ``seconds`` (client ``i``
    sends chip ``i % len(chips)``). With ``expected`` (``[len(chips), dim]``, the engine's own
    embeddings), an answer whose cosine to its chip's row is below 0.9999 counts as ``wrong``: a
    batched server must give each request its own row."""
    import tritonclient.http as triton

    latencies: list[float] = []
    errors: list[str] = []
    wrong: list[int] = []
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = triton.InferenceServerClient(http, network_timeout=120, connection_timeout=60)
        k = index % len(chips[0])
        inputs = []
        for name, array in zip(("pixels", "lonlat", "date"), chips):
            tensor = triton.InferInput(name, [1, *array.shape[1:]], "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array[k : k + 1]), binary_data=True)
            inputs.append(tensor)
        wanted = [triton.InferRequestedOutput("embedding", binary_data=True)]
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                answer = connection.infer("clay", inputs, outputs=wanted).as_numpy("embedding")
                latencies.append(time.perf_counter() - start)
                if expected is not None and cosine(answer[0], expected[k]) < 0.9999:
                    wrong.append(k)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(str(exc)[:200])
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "seconds": wall, "requests": len(latencies), "errors": len(errors),
            "wrong": len(wrong), "error_examples": errors[:3], "chips_per_s": len(latencies) / wall,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None}  # fmt: skip


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def batch_histogram(http: str) -> dict[str, float]:
    """The server's ``clay_batch_rows`` histogram: batches per upper bound (cumulative), count, sum."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    count = float(re.search(r"^clay_batch_rows_count (\S+)$", text, flags=re.M).group(1))
    total = float(re.search(r"^clay_batch_rows_sum (\S+)$", text, flags=re.M).group(1))
    buckets = {le: float(v) for le, v in re.findall(r'^clay_batch_rows_bucket\{le="([^"]+)"\} (\S+)$', text, flags=re.M)}
    return {"batches": count, "rows": total, "mean_rows": total / count if count else 0.0, "cumulative": buckets}


def run(engine: Path, clients: int, seconds: float, max_batch: int, max_delay_ms: float) -> dict:
    with ClayEmbedder(engine) as embedder:
        baseline = in_process_rate(embedder, max_batch)
        chips = chips_for(embedder, 4)
        expected = embedder.embed(*chips)
        engine_name = embedder.engine.describe()
    with running_server(engine, "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms)) as server:
        measured = load(server["http"], chips, clients, seconds, expected)
        histogram = batch_histogram(server["http"])
    return {"engine": engine_name, "max_batch": max_batch, "max_delay_ms": max_delay_ms, "in_process_chips_per_s": baseline,
            "percent_of_in_process": 100 * measured["chips_per_s"] / baseline, **measured, "batch_rows": histogram}  # fmt: skip


def markdown(report: dict) -> str:
    h = report["batch_rows"]
    return (f"`clay-serve` load test on {report['cpu']} ({report['cores']} cores), commit {report['commit'][:10]}, "
            f"{report['date']}: {report['engine']}, --max-batch {report['max_batch']} --max-delay-ms "
            f"{report['max_delay_ms']:g}; {report['clients']} concurrent tritonclient HTTP clients (binary tensors, "
            f"one chip per request) for {report['seconds']:.1f} s on loopback.\n\n"
            f"| requests | errors | chips/s | p50 ms | p99 ms | in-process embed at batch {report['max_batch']} | % of it | "
            f"batches run | mean chips per batch |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {report['requests']} | {report['errors']} | {report['chips_per_s']:.1f} | {report['p50_ms']:.0f} | "
            f"{report['p99_ms']:.0f} | {report['in_process_chips_per_s']:.1f} | {report['percent_of_in_process']:.0f} % | "
            f"{h['batches']:.0f} | {h['mean_rows']:.1f} |\n\nBatch sizes run (cumulative counts by upper bound): "
            + ", ".join(f"≤{k}: {v:.0f}" for k, v in h["cumulative"].items()) + "\n")  # fmt: skip


@click.command()
@click.option("--engine", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=20.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True)
def main(engine: Path, clients: int, seconds: float, max_batch: int, max_delay_ms: float, out: Path) -> None:
    report = run(engine, clients, seconds, max_batch, max_delay_ms) | measured_on()
    write_results(out, f"serve-load-cpu-{engine.stem.replace('.', '-')}", report, markdown(report))


if __name__ == "__main__":
    main()
