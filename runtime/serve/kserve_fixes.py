"""What KServe's ``ModelServer`` 0.21 needs to serve Clay chips well, in one place.

Measured on this project's machine before each fix (see the README's serving section):
- it binds 0.0.0.0 (HTTP) and ``[::]`` (gRPC) whatever it is told: a laptop service would listen on
  every interface. :func:`bind_servers` makes both listen on the host given.
- its gRPC message limit is 8 MiB, while one 13-band chip is 13.6 MB: raised to the request limit.
- its HTTP binary-tensor decoder turns every input into a Python list and back (0.9 s per 13.6 MB
  chip): :func:`decode_binary_requests` keeps the bytes and reads them with ``np.frombuffer``.
- it accepts any HTTP body size: :class:`BodyLimit` answers 413 before reading an oversize body
  (chips by ``--max-batch``, scenes by ``--max-scene-mb``).
- an engine failure must reach clients as HTTP 500 / gRPC INTERNAL with its reason:
  :class:`EngineFailure` and :func:`engine_failure_response`.

Everything here patches the ``kserve`` package for this process only, so it is applied by
``clay-serve`` (the application), never on import; the version is pinned in the ``serve`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import orjson
from fastapi.responses import JSONResponse
from grpc import aio
from grpc_interceptor.exceptions import Internal
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.server import RESTServer


class EngineFailure(Internal):
    """The engine failed on a request: HTTP 500 and gRPC INTERNAL, with the reason."""


async def engine_failure_response(_, exc: EngineFailure) -> JSONResponse:
    return JSONResponse(status_code=500, content={"error": exc.details})


def bind_servers(host: str, max_message: int) -> None:
    """Make ``ModelServer.start`` build REST and gRPC servers that listen on ``host`` only, the gRPC
    one with ``max_message``-byte messages both ways."""
    address = f"[{host}]" if ":" in host else host

    class HostRESTServer(RESTServer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host  # the uvicorn.Config its server was built with

    class HostGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:  # upstream's start, with our address and limits
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_send_message_length", max_message), ("grpc.max_receive_message_length", max_message)],
            )
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            self._server.add_insecure_port(f"{address}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    model_server.RESTServer, model_server.GRPCServer = HostRESTServer, HostGRPCServer


def _from_bytes(cls, req_bytes: bytes, json_length: int, model_name: str) -> InferRequest:
    """Upstream ``InferRequest.from_bytes`` without the round trip through a Python list."""
    try:
        request = orjson.loads(req_bytes[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"unrecognized request format: {exc}") from None
    body, start, inputs = memoryview(req_bytes), json_length, []
    for item in request.get("inputs") or []:
        parameters = item.get("parameters") or {}
        tensor = InferInput(name=item["name"], shape=item["shape"], datatype=item["datatype"], parameters=parameters)
        if item.get("data") is not None:
            tensor.data = item["data"]
        elif "binary_data_size" in parameters:
            end = start + int(parameters["binary_data_size"])
            if end > len(req_bytes):
                raise InvalidInput(f"binary_data_size of input {tensor.name!r} runs past the end of the request")
            tensor._raw_data = body[start:end]  # read by InferInput.as_numpy with np.frombuffer
            start = end
        else:
            raise InvalidInput(f"input {tensor.name!r} has neither 'data' nor binary data")
        inputs.append(tensor)
    outputs = request.get("outputs")
    requested = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs] if outputs else None
    return cls(model_name=model_name, request_id=request.get("id"), parameters=request.get("parameters"),
               infer_inputs=inputs, request_outputs=requested)  # fmt: skip


def decode_binary_requests() -> None:
    InferRequest.from_bytes = classmethod(_from_bytes)


class BodyLimit:
    """ASGI middleware: 413 with one line for a body larger than ``limit`` bytes, before reading it.

    ``meaning`` says what the limit stands for (e.g. "at most 8 chips of 13 bands per request:
    --max-batch 8"); ``paths`` gives a path of its own its own ``(limit, meaning)`` (``POST /scene``'s
    scenes); ``on_refusal`` is called with the message (the server logs and counts it like any
    refused request)."""

    def __init__(self, app, limit: int, meaning: str, on_refusal: Callable[[str], None],
                 paths: dict[str, tuple[int, str]] | None = None) -> None:  # fmt: skip
        self.app, self.limit, self.meaning, self.on_refusal = app, limit, meaning, on_refusal
        self.paths = paths or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            limit, meaning = self.paths.get(scope.get("path", ""), (self.limit, self.meaning))
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                message = (f"request body of {int(length)} bytes is larger than this server's limit of "
                           f"{limit} bytes ({meaning})")  # fmt: skip
                self.on_refusal(message)
                await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)
