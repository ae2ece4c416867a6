"""``clay-run --ray`` on a local Ray with 2 CPUs: the same files as the single-process run, a
corrupt scene reported while the others finish, ``--resume`` after a killed run, an engine actor
that dies mid-run, and the one-line message without the ray extra.

One Ray for the whole module (started once, ~5 s): runs in this process use it as a library user's
own Ray; the killed run is a separate driver connected to it through ``RAY_ADDRESS``. The demo
engine and generated uint16 S2 scenes, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.cli import main
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.ray_job import DIE_AFTER_ENV, DIE_MARKER_ENV, MAX_BLOCKS, chips_per_block
from clay.training.synthetic import write_scene

NAMES = [f"s{k}" for k in range(6)]
PROGRESS = re.compile(r"clay-run: ray: (\d+)/(\d+) scenes, (\d+)/(\d+) chips, [\d.]+ chips/s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray with 2 CPUs for the module; its address for other drivers. HOME and Ray's
    session files stay under /tmp (a short path: Ray's sockets live there) and token auth is off,
    so nothing is written to the real home."""
    ray = pytest.importorskip("ray", reason="needs the ray extra")
    saved = {key: os.environ.get(key) for key in ("HOME", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ.update(HOME=str(tmp_path_factory.mktemp("home")), RAY_AUTH_MODE="disabled")
    os.environ.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="clay-ray-", dir="/tmp")
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 << 20, log_to_driver=False,
                       logging_level=logging.ERROR, _temp_dir=temp)  # fmt: skip
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Six uint16 S2 scenes of 1024 × 512 px: 2 chips each."""
    folder = tmp_path_factory.mktemp("scenes")
    return [write_scene(folder / f"{name}.tif", 1024, 512, seed=k, dtype="uint16", bands=S2_BANDS)
            for k, name in enumerate(NAMES)]  # fmt: skip


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory) -> Path:
    """The single-process clay-run's files for the six scenes (with patch files and patch rasters)."""
    out = tmp_path_factory.mktemp("reference")
    assert clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", out, "--patch-embeddings", "--patch-raster") == 0
    return out


def clay_run(*args) -> int:
    """``clay-run ARGS`` in this process (so that ``--ray`` uses the module's Ray); its exit code."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        if isinstance(exc.code, str):  # what the interpreter would print on the way out
            print(exc.code, file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def lasting(metadata: dict) -> dict:
    """Key-value metadata (GeoParquet) or tags (patch raster) but when the scene was embedded
    (``processing:datetime``), which differs from run to run."""
    return {k: v for k, v in metadata.items() if k not in (b"processing:datetime", "PROCESSING_DATETIME")}


def assert_same_files(out: Path, reference: Path, names: list[str], kinds: tuple[str, ...] = ("",)) -> None:
    """Row for row: same schema and key-value metadata, every column equal, embeddings to float
    tolerance; and no file left under a .partial name.

    The demo engine quantises activations per batch (dynamic int8), so a chip's embedding depends
    (by ~1e-3) on the chips batched with it: the runs compared here batch the same chips together
    (consecutive chips in scene and grid order, the engine's preferred batch of 2)."""
    for name in (name + kind for name in names for kind in kinds):
        ours, theirs = pq.read_table(out / f"{name}.parquet"), pq.read_table(reference / f"{name}.parquet")
        assert ours.schema.equals(theirs.schema), name
        assert lasting(ours.schema.metadata) == lasting(theirs.schema.metadata), name
        assert pq.ParquetFile(out / f"{name}.parquet").metadata.num_row_groups == 1
        for column in ours.column_names:
            if column == "embeddings":
                a, b = (np.stack(t[column].to_numpy(zero_copy_only=False)) for t in (ours, theirs))
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
            else:
                assert ours[column].equals(theirs[column]), (name, column)
        keys = [c for c in ("chip_row", "chip_col", "row", "col") if c in ours.column_names]
        cells = list(zip(*(ours[c].to_pylist() for c in keys)))
        assert len(cells) == len(set(cells)) == theirs.num_rows  # every chip (or patch) exactly once
    assert not list(out.glob("*.partial"))


def zero_tile(path: Path, column: int = 2, row: int = 1) -> Path:
    """One compressed 256 px tile's bytes overwritten with zeros: the header and other tiles intact,
    so the scene passes validation and fails when that chip is read (rows 0-512, cols 512-1024)."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * size)
    return path


def test_ray_writes_the_single_process_files_row_for_row(cluster, scenes, reference, tmp_path, capfd):
    manifest = tmp_path / "scenes.txt"  # a manifest of the same scenes
    manifest.write_text("# the six scenes\n" + "\n".join(map(str, scenes)) + "\n")
    code = clay_run(manifest, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--ray", "--patch-embeddings",
                    "--patch-raster")  # fmt: skip
    err = capfd.readouterr().err
    assert code == 0, err
    assert_same_files(tmp_path / "out", reference, NAMES, kinds=("", ".patches"))
    for name in NAMES:  # the patch rasters: same grid, tags and cells (to the embeddings' tolerance)
        with rasterio.open(tmp_path / "out" / f"{name}.patches.tif") as ours, rasterio.open(reference / f"{name}.patches.tif") as theirs:
            profiles = [{k: v for k, v in d.profile.items() if k != "nodata"} for d in (ours, theirs)]  # nodata: NaN
            assert profiles[0] == profiles[1] and ours.descriptions == theirs.descriptions
            assert lasting(ours.tags()) == lasting(theirs.tags())
            np.testing.assert_allclose(ours.read(), theirs.read(), atol=1e-5, rtol=0)
    progress = [tuple(map(int, m.groups())) for m in PROGRESS.finditer(err)]
    assert progress and progress[-1] == (6, 6, 12, 12) and "Traceback" not in err
    assert "engine actors (1 CPU each, reads fused into them)" in err


def test_a_corrupt_scene_is_reported_and_the_others_finish(cluster, scenes, reference, tmp_path, capfd):
    folder = tmp_path / "in"
    folder.mkdir()
    inputs = [Path(shutil.copy(scene, folder)) for scene in scenes]
    zero_tile(inputs[3])  # fails inside Ray, when its second chip is read
    lacking = write_scene(folder / "lacking.tif", 600, 600, dtype="uint16", bands=S2_BANDS[:4])  # fails validation
    code = clay_run(*inputs, lacking, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--ray")
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    done = [name for name in NAMES if name != "s3"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [f"{n}.parquet" for n in done]
    report = err[err.index("2 scene(s) failed"):].splitlines()
    corrupt = next(line for line in report if line.startswith("clay-run:   s3: "))
    assert "s3.tif: read failed at rows 0-512, cols 512-1024 (" in corrupt and corrupt.endswith(")")
    assert any(line.startswith("clay-run:   lacking: ") and "lacks band(s)" in line for line in report)
    for table in (pq.read_table(tmp_path / "out" / f"{n}.parquet") for n in done):  # same rows, other folder
        assert table.num_rows == 2


def test_resume_after_a_killed_run_writes_every_chip_once(cluster, scenes, reference, tmp_path, capfd):
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "clay.runtime.cli", *map(str, scenes), "--engine", DEMO_ENGINE,
                               "--out", out, "--ray"], env=os.environ | {"RAY_ADDRESS": cluster},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while driver.poll() is None and not list(out.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)  # a driver killed part-way: no clean-up of any kind
    stderr = driver.communicate(timeout=60)[1]
    assert driver.returncode == -signal.SIGKILL, stderr
    finished = sorted(p.name for p in out.glob("*.parquet"))
    assert 1 <= len(finished) < 6, finished  # stopped part-way
    code = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", out, "--ray", "--resume")
    err = capfd.readouterr().err
    assert code == 0, err
    assert err.count("skipped (--resume)") == len(finished)
    assert_same_files(out, reference, NAMES)


def test_an_engine_actor_that_dies_mid_run_is_replaced_and_nothing_is_lost(cluster, scenes, reference, tmp_path,
                                                                          monkeypatch, capfd):  # fmt: skip
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_AFTER_ENV, "1")  # the first actor handed its second batch dies before running it
    monkeypatch.setenv(DIE_MARKER_ENV, str(marker))
    code = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", tmp_path / "out", "--ray")
    err = capfd.readouterr().err
    assert code == 0, err
    assert marker.exists()  # an actor really died
    assert_same_files(tmp_path / "out", reference, NAMES)


def test_ray_without_the_extra_says_which_to_install(tmp_path):
    code = (
        "import sys\nsys.modules['ray'] = None  # as on an install without the ray extra\n"
        "from clay.runtime.cli import main\n"
        f"main(['scene.tif', '--engine', {str(DEMO_ENGINE)!r}, '--out', {str(tmp_path)!r}, '--ray'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    root = Path(__file__).resolve().parents[1]  # this environment is installed from the checkout
    assert lines[0] == f'clay-run --ray needs the ray extra: pip install "{root}[ray]" (missing: ray)'


def test_a_cluster_nobody_answers_is_one_line_in_seconds(tmp_path):
    pytest.importorskip("ray", reason="needs the ray extra")
    scene = write_scene(tmp_path / "s.tif", 512, 512, dtype="uint16", bands=S2_BANDS)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(scene), "--engine", str(DEMO_ENGINE),
                             "--out", str(tmp_path / "out"), "--ray"], capture_output=True, text=True, timeout=120,
                            env=os.environ | {"RAY_ADDRESS": "127.0.0.1:1"})  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and time.monotonic() - start < 60, result.stderr[-2000:]
    assert lines[0].startswith("clay-run: cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:1 (")


def test_blocks_hold_whole_batches_and_stay_few():
    assert chips_per_block(12, 2, 2) == 2  # a small run: one batch a block, every actor busy
    assert chips_per_block(128, 2, 2) == 8  # four batches a block once each actor gets four blocks
    assert chips_per_block(1_000_000, 16, 64) % 16 == 0 and 1_000_000 / chips_per_block(1_000_000, 16, 64) <= MAX_BLOCKS


def test_an_engine_the_cluster_cannot_load_is_one_line(cluster, scenes, tmp_path, capfd):
    code = clay_run(scenes[0], "--engine", tmp_path / "absent.onnx", "--out", tmp_path / "out", "--ray")
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err and "ray::" not in err, err
    assert err.strip().splitlines()[-1] == f"clay-run: {tmp_path / 'absent.onnx'}: no such engine file"
