"""The Clay model behind the Open Inference Protocol, on KServe's ``ModelServer``.

Model ``clay`` takes the exported graph's inputs — ``pixels`` FP32 [-1, C, 512, 512] (raw values),
``lonlat`` FP32 [-1, 2], ``date`` FP32 [-1, 3] — and returns ``embedding`` FP32 [-1, dim] (and
``patch_embeddings`` where the engine has them): the same names and shapes as Triton serving the
ONNX or TensorRT artifact, so one client works against both. Concurrent requests are batched
(:mod:`clay.runtime.serve.batching`). A bad request is a 4xx with one line and the server keeps serving;
an engine failure is a 5xx with its reason. Whole scenes go through ``POST /scene``
(:mod:`clay.runtime.serve.scenes`), on the same engine.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Histogram

from ..api import ClayEmbedder
from ..engines.base import Engine, all_finite
from ..errors import first_line
from .batching import DynamicBatcher

# kserve parses sys.argv when imported (its own --http_port, --workers...): keep ours away from it.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse, model_server
    from kserve.errors import InvalidInput
    from kserve.logging import logger as kserve_logger
finally:
    sys.argv = _argv

from . import kserve_fixes  # noqa: E402 - after kserve, whose argv parsing is kept away above
from .scenes import SCENE_PATH, SceneLimits, SceneService

log = logging.getLogger(__name__)

MODEL_NAME = "clay"
INPUT_NAMES = ("pixels", "lonlat", "date")

REQUEST_SECONDS = Histogram("clay_request_seconds", "Time from a request's arrival to its response, per protocol",
                            ["protocol"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
BATCH_ROWS = Histogram("clay_batch_rows", "Chips per engine call (what dynamic batching achieved)",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))  # fmt: skip
REQUESTS = Counter("clay_requests", "Requests by outcome", ["outcome"])


@dataclass(frozen=True)
class ServeOptions:
    """Where and how ``clay-serve`` serves (its command-line options)."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_batch: int = 8
    max_delay_ms: float = 5.0
    scenes: SceneLimits = field(default_factory=SceneLimits)


class BadRequest(ValueError):
    """A request the server refuses with a 4xx; the message says what is wrong, in one line."""


def request_limit(engine: Engine, max_batch: int) -> int:
    """The largest request body accepted: ``max_batch`` chips of the engine's bands, plus 1 MiB for
    the JSON header and the small inputs."""
    meta = engine.metadata
    return max_batch * len(meta.bands) * meta.chip_size**2 * 4 + (1 << 20)


def input_specs(engine: Engine) -> dict[str, list[int]]:
    """The inputs as the Open Inference Protocol declares them: -1 for any batch."""
    return {name: [-1, *shape] for name, shape in engine.metadata.input_shapes.items()}


def output_specs(engine: Engine) -> dict[str, list[int]]:
    return {name: [-1, *shape] for name, shape in engine.metadata.output_shapes.items()}


def validate(tensors: dict[str, tuple[str, list[int], object]], engine: Engine, max_batch: int) -> dict[str, np.ndarray]:
    """``{name: (datatype, shape, decode)}`` → the engine's inputs, or :class:`BadRequest`."""
    specs = input_specs(engine)
    if set(tensors) != set(INPUT_NAMES):
        raise BadRequest(f"inputs must be {', '.join(INPUT_NAMES)}; got {', '.join(sorted(tensors)) or 'none'}")
    arrays, batch = {}, None
    for name in INPUT_NAMES:
        datatype, shape, decode = tensors[name]
        if datatype != "FP32":
            raise BadRequest(f"input {name} must be FP32, not {datatype}")
        want = specs[name]
        if len(shape) != len(want) or any(w != -1 and s != w for s, w in zip(shape, want)):
            raise BadRequest(f"input {name} must be {want} (-1: any batch), got {list(shape)}")
        batch = shape[0] if batch is None else batch
        if shape[0] != batch:
            raise BadRequest(f"inputs disagree on the batch: pixels has {batch} rows, {name} has {shape[0]}")
        try:
            arrays[name] = decode()
        except (ValueError, InvalidInput) as exc:
            raise BadRequest(f"input {name}: its data do not fill shape {list(shape)} ({exc})") from None
    if not 1 <= batch <= max_batch:
        raise BadRequest(f"a request holds 1 to {max_batch} chips (this server's --max-batch), not {batch}")
    for name, array in arrays.items():
        if not all_finite(array):
            raise BadRequest(f"input {name} holds NaN or infinite values; fill nodata before embedding")
    return arrays


class ClayModel(kserve.Model):
    """The engine as KServe model ``clay``, with dynamic batching."""

    def __init__(self, engine: Engine, options: ServeOptions) -> None:
        super().__init__(MODEL_NAME)
        self.engine, self.options = engine, options
        self.output_specs = output_specs(engine)
        self.batcher = DynamicBatcher(self._infer, options.max_batch, options.max_delay_ms / 1000, BATCH_ROWS.observe)
        self.ready = True

    def _infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.infer(arrays["pixels"], arrays["lonlat"], arrays["date"])

    def get_input_types(self) -> list[dict]:
        return [{"name": n, "datatype": "FP32", "shape": s} for n, s in input_specs(self.engine).items()]

    def get_output_types(self) -> list[dict]:
        return [{"name": n, "datatype": "FP32", "shape": s} for n, s in self.output_specs.items()]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        start = time.perf_counter()
        protocol = "grpc" if payload.from_grpc else "http"
        try:
            arrays = validate({t.name: (t.datatype, list(t.shape), t.as_numpy) for t in payload.inputs},
                              self.engine, self.options.max_batch)  # fmt: skip
            wanted = [o.name for o in payload.request_outputs or []] or list(self.output_specs)
            unknown = [name for name in wanted if name not in self.output_specs]
            if unknown:
                raise BadRequest(f"unknown output(s) {', '.join(unknown)}; this engine has {', '.join(self.output_specs)}")
        except BadRequest as exc:
            REQUESTS.labels("invalid").inc()
            raise InvalidInput(str(exc)) from None  # HTTP 400, gRPC INVALID_ARGUMENT
        try:
            outputs = await self.batcher.submit(arrays)
        except Exception as exc:  # noqa: BLE001 - any engine failure is the server's, with its reason
            REQUESTS.labels("failed").inc()
            reason = f"the engine failed: {first_line(exc)[:300]}"
            log.error("engine failure: %s", reason)
            raise kserve_fixes.EngineFailure(reason) from None
        response = []
        for name in wanted:
            tensor = InferOutput(name=name, shape=list(outputs[name].shape), datatype="FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(outputs[name], np.float32), binary_data=True)
            response.append(tensor)
        REQUESTS.labels("ok").inc()
        REQUEST_SECONDS.labels(protocol).observe(time.perf_counter() - start)
        return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name, infer_outputs=response,
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)  # fmt: skip


def model_metadata(engine: Engine, options: ServeOptions) -> dict:
    """The Open Inference Protocol's model metadata, with the engine's own record as parameters."""
    meta = engine.metadata
    return {
        "name": MODEL_NAME, "versions": ["1"], "platform": f"clay-runtime/{engine.backend}",
        "inputs": [{"name": n, "datatype": "FP32", "shape": s} for n, s in input_specs(engine).items()],
        "outputs": [{"name": n, "datatype": "FP32", "shape": s} for n, s in output_specs(engine).items()],
        "parameters": {"bands": ",".join(meta.bands), "groups": ",".join(meta.groups), "chip_size": meta.chip_size,
                       "patch_size": meta.patch_size, "dim": meta.dim, "model_size": meta.model_size,
                       "precision": meta.precision, "weights": meta.weights, "checkpoint": meta.checkpoint,
                       "checkpoint_sha256": meta.checkpoint_sha256, "max_batch_per_request": options.max_batch,
                       "max_request_bytes": request_limit(engine, options.max_batch),
                       "max_scene_bytes": options.scenes.max_bytes},
    }  # fmt: skip


class OneLineRequestErrors(logging.Filter):
    """KServe logs every refused request with its traceback; a refused request is the client's
    mistake or the engine's reason, said in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (InvalidInput, kserve_fixes.EngineFailure)):
            kind = "refused a request" if isinstance(error, InvalidInput) else "engine failure"
            record.msg, record.args, record.exc_info, record.exc_text = f"{kind}: {error}", (), None, None
        return True


def refused(reason: str) -> None:
    """A request refused before KServe saw it (a body over the limit): logged and counted like the others."""
    REQUESTS.labels("invalid").inc()
    log.error("refused a request: %s", reason)


def serve(engine: Engine, options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT (KServe's handlers stop both servers gracefully)."""
    logging.getLogger(kserve_logger.name).addFilter(OneLineRequestErrors())
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # inside KServe's routes
    limit = request_limit(engine, options.max_batch)
    kserve_fixes.bind_servers(options.host, limit)
    kserve_fixes.decode_binary_requests()
    app = model_server.app
    bands = len(engine.metadata.bands)
    app.add_middleware(kserve_fixes.BodyLimit, limit=limit, on_refusal=refused,
                       meaning=f"at most {options.max_batch} chips of {bands} bands per request: --max-batch {options.max_batch}",
                       paths={SCENE_PATH: (options.scenes.max_bytes, options.scenes.meaning())})  # fmt: skip
    app.add_exception_handler(kserve_fixes.EngineFailure, kserve_fixes.engine_failure_response)
    metadata = model_metadata(engine, options)

    @app.get(f"/v2/models/{MODEL_NAME}")  # added before KServe's own route, so it answers first
    async def clay_metadata() -> dict:
        return metadata

    embedder = ClayEmbedder(engine)  # the same engine: its calls are serialised with the batcher's
    scenes = SceneService(embedder, options.scenes)
    scenes.install(app)

    server = kserve.ModelServer(http_port=options.http_port, grpc_port=options.grpc_port, workers=1,
                                enable_latency_logging=False)  # fmt: skip
    try:  # KServe runs its servers under asyncio.run: uvloop (a KServe dependency) reads sockets faster
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # KServe's set-up asks for the current loop
    except ImportError:
        pass
    try:
        server.start([ClayModel(engine, options)])
    finally:
        scenes.close()
        embedder.close()  # its reader threads; the engine stays the caller's
