"""``clay-serve``: a Clay engine behind the Open Inference Protocol (KServe v2), over HTTP and gRPC."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from ..console import require_extra, setup_logging
from ..engines.base import EngineError
from ..demo import resolve_engine
from ..engines.choice import BACKENDS, open_engine


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engine", "engine_path", type=click.Path(path_type=Path), required=True,
              help="An artifact written by clay-export, or its output folder (the artifact for the backend is picked; a "
                   "Clay v1.5 folder of sensors: POST /scene embeds each scene by its sensor's), or demo (the bundled engine).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (HTTP and gRPC); 0.0.0.0 to serve other machines.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8081, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Chips per engine call; concurrent requests are batched up to it. Also the most chips one request may hold.")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for more requests after its first one.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for ONNX Runtime.")
@click.option("--max-scene-mb", type=click.FloatRange(min=0, min_open=True), default=512, show_default=True,
              help="POST /scene: the largest scene, in MiB: an upload, or a URL's files together (413 above it).")
@click.option("--scene-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="POST /scene: scenes embedded at once (each on its own thread, all on the one engine).")
@click.option("--scene-queue", type=click.IntRange(min=0), default=4, show_default=True,
              help="POST /scene: scenes that may wait for a worker (uploading or queued); one more is a 503.")
@click.option("--allow-url", "allow_urls", multiple=True, metavar="PREFIX",
              help="POST /scene?url=: an http(s) prefix (https://host/path/) under which GeoTIFFs and STAC Items (and "
                   "their assets) may be read; repeat for several. None: the server reads no URL.")
def main(engine_path, backend, host, http_port, grpc_port, max_batch, max_delay_ms, threads, max_scene_mb,
         scene_workers, scene_queue, allow_urls) -> None:  # fmt: skip
    """Serve a Clay engine as model 'clay' on the Open Inference Protocol (KServe v2): the API NVIDIA
    Triton, KServe and Seldon MLServer speak, so tritonclient (HTTP or gRPC) calls it as it calls
    Triton serving clay-export's artifacts.

    Inputs pixels FP32 [-1, C, 512, 512] (raw values, the engine's bands), lonlat FP32 [-1, 2]
    (degrees), date FP32 [-1, 3] (year, month, day); output embedding FP32 [-1, dim] (and
    patch_embeddings where the engine has them). Health: /v2/health/live, /v2/health/ready;
    metadata: /v2/models/clay; Prometheus metrics: /metrics on the HTTP port.

    Whole scenes: POST /scene with a GeoTIFF as the body (or multipart/form-data), or ?url= under an
    --allow-url prefix, answers the rows clay-run writes for it (chips; rows=patches: patch rows) as
    GeoJSON or GeoParquet (format=geojson|parquet, or the Accept header). Per request, as clay-run's
    options: name (the body's file name, for its date), date, sar_units, s2_offset, resampling, edge,
    max_nodata, sensor (Clay v1.5). A scene clay-run refuses is a 422 with clay-run's words; over --max-scene-mb a 413;
    beyond --scene-workers + --scene-queue a 503.
    """
    require_extra("clay-serve", "serve")
    setup_logging("clay-serve")
    from .scenes import SceneLimits, url_allowed
    from .service import ServeOptions, serve

    for prefix in allow_urls:  # a prefix no URL can be under (not http(s), credentials, no host) is a typo
        if not url_allowed(prefix, (prefix,)):
            raise click.BadParameter(f"{prefix}: an http(s) URL prefix such as https://host/path/", param_hint="--allow-url")

    try:
        engine = open_engine(resolve_engine(engine_path), backend, threads)  # "demo": the bundled engine
    except EngineError as exc:
        sys.exit(f"clay-serve: {exc}")
    for port in (http_port, grpc_port):  # one line now, rather than a server half started
        problem = _cannot_listen(host, port)
        if problem:
            engine.close()
            sys.exit(f"clay-serve: cannot listen on {host}:{port} ({problem})")
    scenes = SceneLimits(round(max_scene_mb * (1 << 20)), scene_workers, scene_queue, tuple(allow_urls))
    options = ServeOptions(host, http_port, grpc_port, max_batch, max_delay_ms, scenes)
    click.echo(f"clay-serve: {engine.path.name} on {engine.describe()}; model 'clay' on http://{host}:{http_port} "
               f"and grpc {host}:{grpc_port}, batches of up to {max_batch} within {max_delay_ms:g} ms", err=True)  # fmt: skip
    try:
        serve(engine, options)
    finally:
        engine.close()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address of this machine), or None."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            # as the servers bind (uvicorn and grpc set SO_REUSEADDR): a port whose last connections
            # are in TIME_WAIT (a server just stopped) is free to them, one with a listener is not
            if os.name != "nt":
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


if __name__ == "__main__":
    main()
