"""``POST /scene`` of clay-serve: a whole GeoTIFF in, the rows clay-run writes for it out.

One clay-serve (the demo engine) on 127.0.0.1, started and stopped by the module, with small limits
(12 MiB scenes, one worker, one waiting) and one allowed URL prefix on a loopback file server
(``tests.range_server``), also started and stopped here. What clay-run writes is computed in this
process by clay-run itself (``clay.runtime.cli.main``) on the same file.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import re
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

if importlib.util.find_spec("kserve") is None:
    pytest.skip(
        "clay-serve needs the serve extra (pip install 'clay-runtime[serve]')", allow_module_level=True
    )

import shapely  # noqa: E402
from clay.benchmarks.serve_load import running_server  # noqa: E402
from clay.runtime.cli import main as clay_run  # noqa: E402
from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE  # noqa: E402
from clay.runtime.engines.choice import read_engine_metadata  # noqa: E402
from clay.training.synthetic import write_scene  # noqa: E402

from tests.test_remote_reads import Server  # noqa: E402 - the loopback range server, as those tests run it
from tests.test_stac import s2_item_folder  # noqa: E402 - an Earth Search Item beside its band files

ITEM = "S2B_48QUE_20230501_0_L2A"

BANDS = read_engine_metadata(DEMO_ENGINE).bands
LIMIT_MB = 12


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scene(
        folder / "scene.tif", 700, 600, seed=3, dtype="uint16", bands=BANDS, tile=128
    )  # 3.6 MB, 4 chips
    write_scene(folder / "undated.tif", 300, 300, seed=4, dtype="uint16", bands=BANDS, with_date_tag=False)
    (folder / "allowed").mkdir()
    (folder / "other").mkdir()
    shutil.copy(folder / "scene.tif", folder / "allowed" / "scene.tif")
    shutil.copy(folder / "scene.tif", folder / "other" / "scene.tif")
    s2_item_folder(folder / "allowed", ITEM)  # allowed/<id>/<id>.json: self link on earth-search.aws...
    return folder


@pytest.fixture(scope="module")
def server(scenes):
    files = Server(scenes)
    folder = scenes / "allowed" / ITEM
    document = json.loads((folder / f"{ITEM}.json").read_text())  # relative asset hrefs (./B02.tif...)
    served = f"{files.base}/allowed/{ITEM}/served.json"
    document["links"] = [link for link in document["links"] if link["rel"] != "self"] + [
        {"rel": "self", "href": served}
    ]
    (folder / "served.json").write_text(json.dumps(document))  # its assets: served beside it
    hrefs = {key: asset["href"].removeprefix("./") for key, asset in document["assets"].items()}
    for key, asset in document["assets"].items():  # the same Item with its files outside the prefix
        asset["href"] = f"{files.base}/other/{hrefs[key]}"
    (folder / "foreign.json").write_text(json.dumps(document))
    for key, asset in document["assets"].items():  # ...and on the server's own disk
        asset["href"] = str(folder / hrefs[key])
    (folder / "local.json").write_text(json.dumps(document))
    try:
        with running_server(DEMO_ENGINE, "--max-scene-mb", str(LIMIT_MB), "--scene-workers", "1", "--scene-queue", "1",
                            "--allow-url", f"{files.base}/allowed/") as running:  # fmt: skip
            yield {**running, "files": files.base}
    finally:
        files.stop()


@pytest.fixture(scope="module")
def clay_run_rows(scenes, tmp_path_factory):
    """What clay-run writes for scene.tif: its chip and patch rows."""
    out = tmp_path_factory.mktemp("clay-run") / "scene.parquet"
    with pytest.raises(SystemExit) as done:
        clay_run(
            [str(scenes / "scene.tif"), "--engine", str(DEMO_ENGINE), "--out", str(out), "--patch-embeddings"]
        )
    assert not done.value.code, done.value.code
    return pq.read_table(out), pq.read_table(out.with_suffix(".patches.parquet"))


def post(
    address: str, query: str = "", body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(address, timeout=120)
    connection.request("POST", f"/scene{query}", body=body, headers=headers or {})
    answer = connection.getresponse()
    return answer.status, dict(answer.getheaders()), answer.read()


def error_line(status: int, content: bytes) -> str:
    text = content.decode()
    assert "\n" not in text and "Traceback" not in text, text
    return json.loads(text)["error"]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/tiff\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def admitted(address: str) -> float:
    """The server's ``clay_scenes_admitted`` gauge (its Prometheus metrics)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return float(re.search(r"^clay_scenes_admitted (\S+)$", text, flags=re.MULTILINE)[1])


def assert_same_rows(got: dict, expected) -> None:
    """Rows from the service (columns as lists) against clay-run's table, row for row."""
    assert got["row"] == expected["row"].to_pylist() and got["col"] == expected["col"].to_pylist()
    assert (
        [str(d) for d in got["date"]]
        == [str(d) for d in expected["date"].to_pylist()]
        == ["2020-02-23"] * len(got["row"])
    )
    mine = np.asarray(got["embeddings"], np.float32)
    theirs = np.stack(expected["embeddings"].to_numpy(zero_copy_only=False))
    assert mine.shape == theirs.shape and np.allclose(mine, theirs, rtol=0, atol=1e-6)
    polygons = shapely.from_wkb(expected["geometry"].to_numpy(zero_copy_only=False))
    assert all(shapely.equals_exact(a, b, tolerance=1e-9) for a, b in zip(got["geometry"], polygons))


def test_an_upload_answers_the_rows_clay_run_writes(server, scenes, clay_run_rows):
    chips, patches = clay_run_rows
    data = (scenes / "scene.tif").read_bytes()
    status, headers, content = post(server["http"], "?name=scene.tif", data, {"Content-Type": "image/tiff"})
    assert status == 200 and headers["content-type"] == "application/geo+json", content[:300]
    collection = json.loads(content)
    features = collection["features"]
    props = {k: [f["properties"][k] for f in features] for k in features[0]["properties"]}
    assert_same_rows(
        {**props, "geometry": [shapely.from_geojson(json.dumps(f["geometry"])) for f in features]}, chips
    )
    assert props["source_url"] == ["scene.tif"] * len(features)  # the name the client gave, not a server path
    assert collection["metadata"]["clay:engine"] == chips.schema.metadata[b"clay:engine"].decode()
    # multipart, GeoParquet by Accept, patch rows
    body, kind = multipart("scene.tif", data)
    status, headers, content = post(server["http"], "?rows=patches", body,
                                    {"Content-Type": kind, "Accept": "application/vnd.apache.parquet"})  # fmt: skip
    assert status == 200 and headers["content-type"] == "application/vnd.apache.parquet", content[:300]
    table = pq.read_table(io.BytesIO(content))
    assert table.schema.metadata[b"geo"] == patches.schema.metadata[b"geo"]
    rows = {name: table[name].to_pylist() for name in ("row", "col", "date", "embeddings")}
    assert_same_rows(
        {**rows, "geometry": shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))}, patches
    )
    assert table["chip_row"].to_pylist() == patches["chip_row"].to_pylist()


def test_a_scenes_band_files_uploaded_together_are_one_scene_as_clay_run_reads_a_folder(server, tmp_path):
    """The demo scene's ten band files in one multipart body: the rows clay-run writes for the folder."""
    out = tmp_path / "demo.parquet"
    with pytest.raises(SystemExit) as done:
        clay_run([str(DEMO_SCENE), "--engine", str(DEMO_ENGINE), "--out", str(out)])
    assert not done.value.code, done.value.code
    expected = pq.read_table(out)
    boundary = uuid.uuid4().hex
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
              "Content-Type: image/tiff\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
             for path in sorted(Path(DEMO_SCENE).glob("*.tif"))]  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _, content = post(server["http"], "?name=T48QUE-20200223&format=parquet", body,
                              {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert status == 200, content[:300]
    table = pq.read_table(io.BytesIO(content))
    assert table["source_url"].to_pylist() == ["T48QUE-20200223"] * table.num_rows == ["T48QUE-20200223"] * 9
    rows = {name: table[name].to_pylist() for name in ("row", "col", "date", "embeddings")}
    assert_same_rows(
        {**rows, "geometry": shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))}, expected
    )


def test_a_url_under_an_allowed_prefix_answers_the_same_rows_and_others_are_403(server, clay_run_rows):
    chips, _ = clay_run_rows
    url = f"{server['files']}/allowed/scene.tif"
    status, _, content = post(server["http"], f"?url={url}&format=parquet")
    assert status == 200, content[:300]
    table = pq.read_table(io.BytesIO(content))
    assert table["source_url"].to_pylist() == [url] * table.num_rows  # as clay-run writes it for this URL
    rows = {name: table[name].to_pylist() for name in ("row", "col", "date", "embeddings")}
    assert_same_rows(
        {**rows, "geometry": shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))}, chips
    )
    status, _, content = post(server["http"], f"?url={url}", b"II*\0")
    assert status == 400 and error_line(status, content) == "a scene is the body or url=, not both"
    for refused in (f"{server['files']}/other/scene.tif", f"{server['files']}/allowed/../other/scene.tif",
                    f"{server['files']}/allowed-not/scene.tif", "file:///etc/passwd"):  # fmt: skip
        status, _, content = post(server["http"], f"?url={refused}")
        assert status == 403 and "may read" in error_line(status, content), (refused, content)


def test_a_stac_item_url_answers_clay_runs_rows_and_assets_outside_the_prefixes_are_403(server, tmp_path):
    url = f"{server['files']}/allowed/{ITEM}/served.json"
    out = tmp_path / "item.parquet"
    with pytest.raises(SystemExit) as done:
        clay_run([url, "--engine", str(DEMO_ENGINE), "--out", str(out)])
    assert not done.value.code, done.value.code
    expected = pq.read_table(out)
    status, _, content = post(
        server["http"], f"?url={url}", headers={"Accept": "application/vnd.apache.parquet"}
    )
    assert status == 200, content[:300]
    table = pq.read_table(io.BytesIO(content))
    assert table["source_url"].to_pylist() == expected["source_url"].to_pylist() == [url] * table.num_rows
    assert table.schema.metadata[b"clay:preprocessing"] == expected.schema.metadata[b"clay:preprocessing"]
    assert np.array_equal(np.stack(table["embeddings"].to_numpy(zero_copy_only=False)),
                          np.stack(expected["embeddings"].to_numpy(zero_copy_only=False)))  # fmt: skip
    assert table["geometry"].equals(expected["geometry"]) and table["date"].equals(expected["date"])
    # the same Item with its files outside the allowed prefix, or on the server's disk: never read
    status, _, content = post(server["http"], f"?url={server['files']}/allowed/{ITEM}/foreign.json")
    assert status == 403 and f"its file {server['files']}/other/" in error_line(status, content)
    status, _, content = post(server["http"], f"?url={server['files']}/allowed/{ITEM}/local.json")
    assert status == 403 and f"its file {Path(tempfile.gettempdir())}" in error_line(status, content)


def test_an_oversized_upload_is_a_413_in_one_line(server):
    connection = http.client.HTTPConnection(server["http"], timeout=60)  # announces more than the limit
    connection.putrequest("POST", "/scene")
    connection.putheader("Content-Length", str((LIMIT_MB << 20) + 1))
    connection.endheaders()
    answer = connection.getresponse()
    message = error_line(answer.status, answer.read())
    assert answer.status == 413 and message.endswith(
        f"limit of {LIMIT_MB << 20} bytes (scenes up to {LIMIT_MB} MiB: --max-scene-mb)"
    )
    # chunked, no length to refuse it by: refused once past the limit (one byte past it here: a client
    # still sending when the server answers and closes may see the connection reset instead)
    over = iter([b"\0" * ((LIMIT_MB << 20) + 1)])
    status, _, content = post(server["http"], "", over)  # an iterable body: http.client sends it chunked
    assert status == 413 and "--max-scene-mb" in error_line(status, content)


def test_an_undated_upload_is_a_422_with_clay_runs_words_and_the_endpoints_advice(server, scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(scenes)
    with pytest.raises(SystemExit) as refused:
        clay_run(["undated.tif", "--engine", str(DEMO_ENGINE), "--out", str(tmp_path / "out")])
    said = str(refused.value.code)
    assert said.startswith("clay-run: undated.tif: ") and "date" in said, said
    status, _, content = post(server["http"], "?name=undated.tif", (scenes / "undated.tif").read_bytes())
    # clay-run's words, its advice in the endpoint's terms (a query parameter, not a flag)
    assert "--date YYYY-MM-DD" in said and "RunOptions(date=...)" in said
    expected = said.removeprefix("clay-run: ").replace(" (RunOptions(date=...) in Python)", "").replace("--date ", "date=")
    assert status == 422 and error_line(status, content) == expected and "pass date=YYYY-MM-DD" in expected
    status, _, content = post(server["http"], "?name=junk.tif", b"not a GeoTIFF")
    assert status == 422 and error_line(status, content).startswith("junk.tif: not a readable GeoTIFF")
    # GDAL opens a file by its content: a VRT (or a STAC Item) uploaded would read what it names
    vrt = (
        f'<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f"<SourceFilename>{scenes / 'scene.tif'}</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    status, _, content = post(server["http"], "?name=scene.tif", vrt.encode())
    assert status == 422 and error_line(status, content).startswith("scene.tif: not a readable GeoTIFF")
    for name in ("item.json", "scenes.txt", "scene.vrt"):
        status, _, content = post(server["http"], f"?name={name}", (scenes / "scene.tif").read_bytes())
        assert (
            status == 400
            and error_line(status, content) == f"{name}: uploads are GeoTIFFs named .tif or .tiff"
        )
    for query, words in (("?date=23/02/2020", "date=23/02/2020: expected YYYY-MM-DD"), ("?rows=tokens", "rows must be"),
                         ("?sar_units=dbm", "sar_units must be"), ("?patches=1", "unknown parameter(s) patches"),
                         ("?format=csv", "format must be"), ("?s2_offset=nan", "s2_offset=nan: not a finite number"),
        ("?max_nodata=half", "max_nodata=half: not a number"), ("?date=2020-01-01&date=2021-01-01", "more than once: date"), ("", "no scene")):  # fmt: skip
        status, _, content = post(server["http"], query, b"" if not query else b"x")
        assert status == 400 and words in error_line(status, content), (query, content)
    status, _, content = post(
        server["http"], "?name=undated.tif&date=2021-05-01", (scenes / "undated.tif").read_bytes()
    )
    assert status == 200 and {f["properties"]["date"] for f in json.loads(content)["features"]} == {
        "2021-05-01"
    }


def test_two_concurrent_callers_both_get_their_rows_and_a_third_beyond_the_queue_is_503(server, scenes):
    """One worker and one waiting place: two uploads whose bodies are still arriving hold both, so a
    third is refused at once (before its body); the two then finish and both get the scene's rows."""
    data = (scenes / "scene.tif").read_bytes()
    callers = []
    for _ in range(2):
        connection = http.client.HTTPConnection(server["http"], timeout=120)
        connection.putrequest("POST", "/scene?name=scene.tif")
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders()
        connection.send(data[: len(data) // 2])
        callers.append(connection)
    deadline = time.monotonic() + 30  # both admitted: their handlers run as soon as their headers arrive
    while admitted(server["http"]) < 2:
        assert time.monotonic() < deadline, "the two uploads were not admitted within 30 s"
        time.sleep(0.05)
    third = http.client.HTTPConnection(server["http"], timeout=60)  # refused before its body is sent
    third.putrequest("POST", "/scene?name=scene.tif")
    third.putheader("Content-Length", str(len(data)))
    third.endheaders()
    answer = third.getresponse()
    status, retry, content = answer.status, answer.getheader("Retry-After"), answer.read()
    assert status == 503 and retry == "1" and "--scene-queue" in error_line(status, content)
    answers = []
    for connection in callers:
        connection.send(data[len(data) // 2 :])
    for connection in callers:
        answer = connection.getresponse()
        answers.append((answer.status, json.loads(answer.read())))
    assert [status for status, _ in answers] == [200, 200]
    assert admitted(server["http"]) == 0
    first, second = ([f["properties"]["embeddings"] for f in body["features"]] for _, body in answers)
    assert len(first) == 4 and np.array_equal(np.float32(first), np.float32(second))


def test_url_prefixes_names_and_accept_are_read_strictly():
    """No server: what --allow-url lets through, what a client's file name becomes, which format an
    Accept header gets."""
    from clay.runtime.serve.scenes import GEOJSON, PARQUET, Refusal, media_type, safe_name, url_allowed

    prefixes = ("https://data.example.com/cogs/", "http://127.0.0.1:8000/allowed")
    for url in ("https://data.example.com/cogs/a.tif", "https://DATA.example.com/cogs/x/y.json",
                "http://127.0.0.1:8000/allowed/scene.tif", "http://127.0.0.1:8000/allowed"):  # fmt: skip
        assert url_allowed(url, prefixes), url
    for url in ("https://data.example.com/cogs-other/a.tif", "https://data.example.com.evil.net/cogs/a.tif",
                "https://data.example.com@evil.net/cogs/a.tif", "https://user:pw@data.example.com/cogs/a.tif",
                "https://data.example.com:8443/cogs/a.tif", "http://data.example.com/cogs/a.tif",
                "https://data.example.com/cogs/../secret.tif", "https://data.example.com/cogs/%2e%2e/secret.tif",
                "http://127.0.0.1:8001/allowed/scene.tif", "http://127.0.0.1/allowed/scene.tif",
                "file:///etc/passwd", "/vsicurl/https://data.example.com/cogs/a.tif", "s3://cogs/a.tif",
                "https://data.example.com:notaport/cogs/a.tif"):  # fmt: skip
        assert not url_allowed(url, prefixes), url
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("C:\\scenes\\S2 A.tif") == "S2_A.tif"
    assert safe_name(".hidden.tif") == "hidden.tif" and safe_name("..") == ""
    assert (
        media_type(None, None) == media_type(None, "*/*") == media_type(None, "application/json") == GEOJSON
    )
    assert media_type(None, "application/vnd.apache.parquet, application/geo+json") == PARQUET
    assert media_type("geojson", "application/vnd.apache.parquet") == GEOJSON  # format= wins
    with pytest.raises(Refusal) as refused:
        media_type(None, "text/csv")
    assert refused.value.status == 406
