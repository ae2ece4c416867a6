"""Remote reads that end (issue 32, item 7): a server that stalls mid-body, refuses (403), or wants a
token, on loopback (``tests.range_server`` in a process of its own), against ``clay-run`` run as a
user runs it. A stalled read fails its scene in one line within the bound that ``--http-timeout``
sets (:func:`clay.runtime.scenes.remote.worst_case_seconds`), the other scenes go on under
``--keep-going``, and no file of the failed scene is left; a 401/403 says its status and that
credentials or a signed URL may have expired."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
from clay.runtime import RunOptions
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.demo import DEMO_SCENE as DEMO_SCENE_PATH
from clay.runtime.scenes.remote import gdal_http_options, http_env, worst_case_seconds
from clay.training.synthetic import write_scene
from rasterio.shutil import copy as gdal_copy

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 2  # --http-timeout of the tests: seconds without progress
STARTUP = 60  # clay-run's own start (imports, engine) on a loaded 2-core machine, beside the bound


def clay_run(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, object]:
    """A one-chip S2 scene as a COG, and the plain GeoTIFF it was made from. The COG holds its header,
    then its overview, then the full-resolution tiles: the first byte of those is where the servers
    below misbehave (past the first range GDAL reads to open the file)."""
    folder = tmp_path_factory.mktemp("remote")
    plain = write_scene(folder / "plain.tif", 512, 512, seed=3, dtype="uint16", bands=S2_BANDS)
    served = folder / "served"
    served.mkdir()
    gdal_copy(str(plain), str(served / "scene.tif"), driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    shutil.copy(served / "scene.tif", served / "opening.tif")
    with rasterio.open(served / "scene.tif") as src:
        pixels_at = min(int(src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b))
                        for b in src.indexes for x in (0, 1) for y in (0, 1))  # fmt: skip
        assert src.descriptions[0] == S2_BANDS[0] and src.tags().get("date") == "2020-02-23"
        assert src.overviews(1) == [2] and pixels_at > 64 << 10, pixels_at  # GDAL opens with 16 KiB
    return {"folder": folder, "served": served, "plain": plain, "pixels_at": pixels_at}


class Server:
    """``python -m tests.range_server`` with faults, on 127.0.0.1, stopped by the test."""

    def __init__(self, folder: Path, *faults: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.range_server", str(folder), *faults],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        ready = select.select([self.process.stdout], [], [], 30)[0]
        port = self.process.stdout.readline().strip() if ready else ""
        assert port.isdigit(), f"the test's file server did not start within 30 s (exit code {self.process.poll()})"
        self.base = f"http://127.0.0.1:{port}"

    def stop(self) -> str:
        """Stop it; what it said (the stalled responses it counted)."""
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
        return err


@pytest.fixture
def serve(monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):  # urllib and GDAL's curl honour it
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.delenv("GDAL_HTTP_HEADERS", raising=False)
    started: list[Server] = []

    def start(folder: Path, *faults: str) -> Server:
        started.append(Server(folder, *faults))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def failures(stderr: str) -> dict[str, str]:
    """The closing list of failed scenes: name → reason."""
    lines = [line.removeprefix("clay-run:   ") for line in stderr.splitlines() if line.startswith("clay-run:   ")]
    return dict(line.split(": ", 1) for line in lines)


def embeddings(path: Path) -> np.ndarray:
    return np.stack(pq.read_table(path)["embeddings"].to_numpy(zero_copy_only=False))


def test_a_server_stalling_mid_body_fails_its_scene_in_one_line_within_the_bound_and_the_others_go_on(
        files, serve, tmp_path):  # fmt: skip
    """One server stalls once the pixels are asked for (the scene opens, its chip read stalls), another
    from its first byte (the header read stalls, in the thread that opens the scene)."""
    server = serve(files["served"], "--stall-at", str(files["pixels_at"]), "--stall-for", "300")
    at_open = serve(files["served"], "--stall-at", "0", "--stall-keep", "64", "--stall-for", "300")
    url, opening = f"{server.base}/scene.tif", f"{at_open.base}/opening.tif"
    out = tmp_path / "out"
    start = time.monotonic()
    result = clay_run(url, opening, files["plain"], "--engine", DEMO_ENGINE, "--out", out, "--keep-going",
                      "--http-timeout", TIMEOUT, timeout=worst_case_seconds(TIMEOUT) + STARTUP)  # fmt: skip
    took = time.monotonic() - start
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert took < worst_case_seconds(TIMEOUT) + STARTUP
    reasons = failures(result.stderr)
    assert sorted(reasons) == ["opening", "scene"]
    mid_body, at_header = reasons["scene"], reasons["opening"]
    assert mid_body.startswith(f"{url}: read failed at rows 0-512, cols 0-512 (no answer within {TIMEOUT} s (")
    assert at_header.startswith(f"{opening}: cannot be read (no answer within {TIMEOUT} s (")
    assert all("--http-timeout" in r and "; GDAL: " in r for r in (mid_body, at_header))
    assert sorted(p.name for p in out.iterdir()) == ["plain.parquet"]  # no partial of the failed scenes
    assert pq.read_table(out / "plain.parquet").num_rows == 1
    assert "stalled" in server.stop() and "stalled" in at_open.stop()  # the reads did reach the stalled bytes


def test_a_stalled_catalogue_fails_the_item_in_one_line_within_the_bound(files, serve, tmp_path):
    """pystac's reader has no timeout: a STAC API that stalls would hang discovery before any scene."""
    item = pystac.Item("stalled", None, None, pystac.utils.str_to_datetime("2020-02-23T00:00:00Z"), {})
    (files["served"] / "stalled.json").write_text(__import__("json").dumps(item.to_dict(include_self_link=False)))
    server = serve(files["served"], "--stall-at", "0", "--stall-for", "300")
    url = f"{server.base}/stalled.json"
    start = time.monotonic()
    result = clay_run(url, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--http-timeout", TIMEOUT,
                      timeout=worst_case_seconds(TIMEOUT) + STARTUP)  # fmt: skip
    assert time.monotonic() - start < worst_case_seconds(TIMEOUT) + STARTUP
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1] == f"clay-run: {url}: cannot read this STAC Item (no answer within {TIMEOUT} s (no byte for " \
                        f"{TIMEOUT} s; --http-timeout))"  # fmt: skip


def test_403_at_open_and_during_the_read_says_the_status_and_that_the_url_may_have_expired(files, serve, tmp_path):
    refused = serve(files["served"], "--status", "403")
    expiring = serve(files["served"], "--status", "403", "--status-at", str(files["pixels_at"]))  # opens, then 403
    urls = {"refused": f"{refused.base}/scene.tif", "expiring": f"{expiring.base}/scene.tif"}
    for name, url in urls.items():
        result = clay_run(url, "--engine", DEMO_ENGINE, "--out", tmp_path / name, "--http-timeout", TIMEOUT)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        where = "cannot be read" if name == "refused" else "read failed at rows 0-512, cols 0-512"
        assert lines[-1].startswith(f"clay-run: {url}: {where} (HTTP 403"), lines[-1]
        assert "credentials or a signed URL may have expired" in lines[-1]
        assert not (tmp_path / name).exists() or not list((tmp_path / name).iterdir())


def test_a_server_that_needs_a_token_gets_it_from_gdal_http_headers_for_files_and_items(files, serve, tmp_path):
    """GDAL sends ``GDAL_HTTP_HEADERS`` with its reads; the runtime's own requests (a STAC Item, the
    probe after a failed read) send them too. Without the token: 401, said as such."""
    server = serve(files["served"], "--token", "s3cret")
    url = f"{server.base}/scene.tif"
    item = pystac.Item("tokened", {"type": "Point", "coordinates": [104.0, 17.0]}, [104, 17, 104, 17],
                       pystac.utils.str_to_datetime("2020-02-23T00:00:00Z"), {"platform": "sentinel-2a"})  # fmt: skip
    item.add_asset("stack", pystac.Asset(url, roles=["data"], extra_fields={"eo:bands": [{"name": b} for b in S2_BANDS]}))
    item.set_self_href(f"{server.base}/tokened.json")
    (files["served"] / "tokened.json").write_text(__import__("json").dumps(item.to_dict()))
    for target in (url, f"{server.base}/tokened.json"):
        result = clay_run(target, "--engine", DEMO_ENGINE, "--out", tmp_path / "none", "--http-timeout", TIMEOUT)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "HTTP 401" in result.stderr and "credentials or a signed URL may have expired" in result.stderr
    env = {**os.environ, "GDAL_HTTP_HEADERS": "Authorization: Bearer s3cret"}
    # --batch 1: the demo engine quantises its activations per batch, so a chip's embedding depends on its batch
    result = clay_run(url, f"{server.base}/tokened.json", "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--batch", 1,
                      env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    local = clay_run(files["plain"], "--engine", DEMO_ENGINE, "--out", tmp_path / "local", "--batch", 1)
    assert local.returncode == 0, local.stderr
    expected = embeddings(tmp_path / "local" / "plain.parquet")
    assert np.array_equal(embeddings(tmp_path / "out" / "scene.parquet"), expected)
    assert np.array_equal(embeddings(tmp_path / "out" / "tokened.parquet"), expected)


def test_the_timeout_is_a_run_option_and_reaches_gdal_as_its_http_limits():
    assert RunOptions().http_timeout == 30.0
    with pytest.raises(ValueError, match="http_timeout must be at least 1 second"):
        RunOptions(http_timeout=0.5)
    with http_env(7):
        seen = rasterio.env.getenv()
    assert {k: seen[k] for k in gdal_http_options(7)} == {
        "GDAL_HTTP_CONNECTTIMEOUT": "7", "GDAL_HTTP_LOW_SPEED_TIME": "7", "GDAL_HTTP_LOW_SPEED_LIMIT": "1024",
        "GDAL_HTTP_TIMEOUT": "70", "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1.0"}  # fmt: skip
    assert worst_case_seconds(7) == 4 * 70 + 1 + 2 + 4


def test_the_previews_decimated_read_has_the_same_limits(monkeypatch):
    """``--preview`` reads the scene again (decimated) on the main thread, outside the readers: it
    runs inside the scene's HTTP limits too."""
    from dataclasses import replace

    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.outputs import preview
    from clay.runtime.scenes.scene import open_scene

    scene = replace(open_scene(DEMO_SCENE_PATH, read_engine_metadata(DEMO_ENGINE), RunOptions()), http_timeout=7)
    seen = []

    class Handle:
        def read(self, index, out_shape, out_dtype):
            seen.append(rasterio.env.getenv().get("GDAL_HTTP_LOW_SPEED_TIME") if rasterio.env.hasenv() else None)
            return np.ones(out_shape, np.float32)

    monkeypatch.setattr(preview, "band_reader", lambda *args, **kwargs: Handle())
    assert preview.true_colour(scene, 8, 8).shape == (8, 8, 3)
    assert seen == ["7", "7", "7"]  # B04, B03, B02
