"""clay-serve on loopback: the Open Inference Protocol over HTTP and gRPC through tritonclient, bad
requests, engine failures, a bounded load test, and the Triton model repository clay-export writes.

Every server here is started by the test on 127.0.0.1 and stopped by it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

# Not imported here: kserve and tritonclient.grpc both register the Open Inference Protocol's
# messages in protobuf's default pool, so they cannot share a process (the server runs in its own).
if importlib.util.find_spec("kserve") is None:
    pytest.skip("clay-serve needs the serve extra (pip install 'clay-runtime[serve]')", allow_module_level=True)
th = pytest.importorskip("tritonclient.http", reason="the client side needs tritonclient[http,grpc]")
tg = pytest.importorskip("tritonclient.grpc", reason="the client side needs tritonclient[http,grpc]")

from clay.benchmarks.serve_load import batch_histogram, chips_for, load, running_server  # noqa: E402
from clay.runtime import ClayEmbedder  # noqa: E402
from clay.runtime.demo import DEMO_ENGINE  # noqa: E402
from clay.runtime.engines.choice import read_engine_metadata  # noqa: E402

GRPC_LIMITS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


@pytest.fixture(scope="module")
def chips():
    with ClayEmbedder(DEMO_ENGINE) as embedder:
        pixels, lonlat, date = chips_for(embedder, 3)
        return pixels, lonlat, date, embedder.embed(pixels, lonlat, date)


@pytest.fixture(scope="module")
def server():
    with running_server(DEMO_ENGINE, "--max-batch", "2") as running:
        yield running


def http_inputs(pixels, lonlat, date, datatype: str = "FP32") -> list:
    tensors = []
    for name, array in (("pixels", pixels), ("lonlat", lonlat), ("date", date)):
        tensor = th.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array.astype(np.float64 if datatype == "FP64" else np.float32), binary_data=True)
        tensors.append(tensor)
    return tensors


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_http_and_grpc_answer_like_the_python_api(server, chips):
    pixels, lonlat, date, expected = chips
    client = th.InferenceServerClient(server["http"], network_timeout=120)
    outputs = [th.InferRequestedOutput("embedding", binary_data=True)]
    got = client.infer("clay", http_inputs(pixels[:2], lonlat[:2], date[:2]), outputs=outputs).as_numpy("embedding")
    assert cosine(got, expected[:2]).min() >= 0.99999
    grpc = tg.InferenceServerClient(server["grpc"], channel_args=GRPC_LIMITS)
    tensors = []
    for name, array in (("pixels", pixels[2:]), ("lonlat", lonlat[2:]), ("date", date[2:])):
        tensor = tg.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    got = grpc.infer("clay", tensors).as_numpy("embedding")
    assert cosine(got, expected[2:]).min() >= 0.99999
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clay") and grpc.is_model_ready("clay")
    with urllib.request.urlopen(f"http://{server['http']}/v2/models/clay") as answer:
        metadata = json.load(answer)
    engine = read_engine_metadata(DEMO_ENGINE)
    assert metadata["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": [-1, len(engine.bands), 512, 512]}
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        ("embedding", [-1, engine.dim]), ("patch_embeddings", [-1, len(engine.groups), 16, 16, engine.dim])]
    assert metadata["parameters"]["checkpoint_sha256"] == engine.checkpoint_sha256
    assert metadata["parameters"]["bands"] == ",".join(engine.bands) and metadata["parameters"]["max_batch_per_request"] == 2
    assert grpc.get_model_metadata("clay").inputs[1].shape == [-1, 2]


def test_it_listens_on_loopback_only(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: it picks the outward interface
        outward = probe.getsockname()[0]
    if outward.startswith("127."):
        pytest.skip("this machine has no interface besides loopback")
    for address in (server["http"], server["grpc"]):
        port = int(address.rsplit(":", 1)[1])
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((outward, port))


def post(address: str, body: bytes, headers: dict) -> tuple[int, str]:
    connection = http.client.HTTPConnection(address, timeout=60)
    connection.request("POST", "/v2/models/clay/infer", body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read().decode(errors="replace")


def test_bad_requests_are_4xx_with_one_line_and_the_server_keeps_serving(server, chips):
    pixels, lonlat, date, expected = chips
    client = th.InferenceServerClient(server["http"], network_timeout=120)
    nan = pixels[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    bad = {
        "missing input": http_inputs(pixels[:1], lonlat[:1], date[:1])[:2],
        "wrong bands": http_inputs(pixels[:1, :9], lonlat[:1], date[:1]),
        "wrong datatype": http_inputs(pixels[:1], lonlat[:1], date[:1], "FP64"),
        "batch above --max-batch": http_inputs(pixels, lonlat, date),
        "batches disagree": http_inputs(pixels[:1], lonlat[:2], date[:1]),
        "NaN": http_inputs(nan, lonlat[:1], date[:1]),
    }
    for case, tensors in bad.items():
        with pytest.raises(th.InferenceServerException) as caught:
            client.infer("clay", tensors)
        # a batch above --max-batch is also a body above the server's limit: refused before it is read
        assert caught.value.status() == ("413" if case.startswith("batch above") else "400"), case
        assert "\n" not in caught.value.message() and len(caught.value.message()) < 300, case
        if case.startswith("batch above"):  # says which limit, in the terms the server was started with
            assert "at most 2 chips of 10 bands per request: --max-batch 2" in caught.value.message()
        good = client.infer("clay", http_inputs(pixels[:1], lonlat[:1], date[:1])).as_numpy("embedding")
        assert cosine(good, expected[:1]).min() >= 0.99999, f"after {case}"
    with pytest.raises(th.InferenceServerException) as caught:
        client.infer("clay", http_inputs(pixels[:1], lonlat[:1], date[:1]), outputs=[th.InferRequestedOutput("tokens")])
    assert caught.value.status() == "400" and "unknown output" in caught.value.message()
    status, text = post(server["http"], b"{not json", {"Content-Type": "application/json"})
    assert status in (400, 422) and text.count("\n") == 0  # FastAPI refuses a body that is not JSON with 422
    connection = http.client.HTTPConnection(server["http"], timeout=60)  # announces 1 GB, sends nothing
    connection.putrequest("POST", "/v2/models/clay/infer")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(1 << 30))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "larger than" in answer.read().decode()
    grpc = tg.InferenceServerClient(server["grpc"], channel_args=GRPC_LIMITS)
    tensor = tg.InferInput("pixels", [1, 9, 512, 512], "FP32")
    tensor.set_data_from_numpy(pixels[:1, :9])
    with pytest.raises(tg.InferenceServerException) as caught:
        grpc.infer("clay", [tensor])
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert client.infer("clay", http_inputs(pixels[:1], lonlat[:1], date[:1])).as_numpy("embedding").shape == (1, 256)
    refusals = [line for line in logged(server, "refused a request: request body of") if "--max-batch 2" in line]
    assert refusals, "".join(server["log"][-10:])  # an oversize body is logged in one line like the 400s


def logged(server: dict, text: str, seconds: float = 10) -> list[str]:
    """The server's log lines holding ``text`` (read by a thread: waits up to ``seconds`` for one)."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        found = [line for line in list(server["log"]) if text in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def broken_engine(path: Path) -> Path:
    """An engine with the demo engine's metadata (dim 1) whose graph fails at run time for a batch
    of two: a test harness for the server's 5xx path, a real ONNX Runtime failure."""
    onnx = pytest.importorskip("onnx")
    from dataclasses import replace

    from onnx import TensorProto, helper

    meta = replace(read_engine_metadata(DEMO_ENGINE), dim=1, outputs=("embedding",))
    bands = len(meta.bands)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Reshape", ["mean", "one_by_one"], ["embedding"])],
        "broken", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", bands, 512, 512]),
                   helper.make_tensor_value_info("lonlat", TensorProto.FLOAT, ["batch", 2]),
                   helper.make_tensor_value_info("date", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("one_by_one", TensorProto.INT64, [2], [1, 1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_an_engine_failure_is_a_5xx_with_its_reason_and_the_server_survives(tmp_path, chips):
    pixels, lonlat, date, _ = chips
    with running_server(broken_engine(tmp_path / "broken.onnx"), "--max-batch", "2", "--max-delay-ms", "0") as running:
        client = th.InferenceServerClient(running["http"], network_timeout=120)
        with pytest.raises(th.InferenceServerException) as caught:
            client.infer("clay", http_inputs(pixels[:2], lonlat[:2], date[:2]))
        assert caught.value.status() == "500" and "the engine failed" in caught.value.message()
        assert client.infer("clay", http_inputs(pixels[:1], lonlat[:1], date[:1])).as_numpy("embedding").shape == (1, 1)
        log = "".join(running["log"])
    assert "Traceback" not in log, log
    assert "engine failure: the engine failed" in log, log


@pytest.fixture(scope="module")
def demo_fp32(tmp_path_factory) -> Path:
    """The demo weights as the float32 graph: a tiny engine whose compute per chip (~90 ms on two
    cores, against ~30 ms for the int8 one) is not dwarfed by moving a 5 MB chip through HTTP."""
    pytest.importorskip("torch", reason="exporting needs the [export] extra")
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("demo-fp32")
    export_artifacts(ExportOptions(out=out, check=False), log=lambda _: None)
    return out / "clay.onnx"


def test_load_of_16_clients_is_batched_without_errors_and_each_gets_its_own_row(chips, demo_fp32):
    """16 concurrent clients for ~6 s (loopback, stops by itself), counted, not timed: no error, every
    answer is its own chip's embedding (cosine to the in-process result), and batches hold several
    requests. How fast the server goes against the Python API is a benchmark
    (``python -m clay.benchmarks.serve_load``), not a test: a loaded machine changes it."""
    pixels, lonlat, date, _ = chips
    with ClayEmbedder(demo_fp32) as embedder:
        expected = embedder.embed(pixels, lonlat, date)
    with running_server(demo_fp32, "--max-batch", "8", "--max-delay-ms", "20") as running:
        result = load(running["http"], (pixels, lonlat, date), clients=16, seconds=6, expected=expected)
        batches = batch_histogram(running["http"])
    print(f"served {result['chips_per_s']:.1f} chips/s, {result['requests']} requests, "
          f"mean batch {batches['mean_rows']:.1f}")
    assert result["errors"] == 0, result["error_examples"]
    assert result["requests"] >= 16 and result["wrong"] == 0
    assert batches["mean_rows"] >= 2 and batches["cumulative"]["1.0"] < batches["batches"]  # batching at work


def test_export_writes_a_triton_repository_whose_configs_parse(tmp_path):
    torch = pytest.importorskip("torch", reason="exporting needs the [export] extra")  # noqa: F841
    from clay.export.artifacts import ExportOptions, export_artifacts
    from clay.export.tensorrt_build import BatchProfile
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repository = tmp_path / "repo"
    export_artifacts(ExportOptions(out=tmp_path / "engine", random_weights=True, size="tiny", fp16=True, check=False,
                                   batch=BatchProfile(1, 4, 16), triton_repository=repository), log=lambda _: None)  # fmt: skip
    folder = repository / "clay_onnx"
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "engine" / "clay.cuda.onnx").read_bytes()
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("clay_onnx", "onnxruntime_onnx", 16)
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
        ("pixels", [13, 512, 512], model_config_pb2.TYPE_FP32), ("lonlat", [2], model_config_pb2.TYPE_FP32),
        ("date", [3], model_config_pb2.TYPE_FP32)]  # fmt: skip
    assert [(o.name, list(o.dims)) for o in config.output] == [("embedding", [256])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert json.loads(config.parameters["clay_metadata"].string_value)["precision"] == "fp16"
    assert not (repository / "clay_trt").exists()  # no plan without TensorRT
    with pytest.raises(text_format.ParseError):  # the check has teeth: a malformed config fails
        text_format.Parse((folder / "config.pbtxt").read_text().replace("max_batch_size", "max_batch"), model_config_pb2.ModelConfig())


def test_a_port_in_use_is_one_line_before_anything_starts():
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "clay.runtime.serve", "--engine", str(DEMO_ENGINE), "--http-port",
                                 str(port)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"clay-serve: cannot listen on 127.0.0.1:{port} (Address already in use)"
