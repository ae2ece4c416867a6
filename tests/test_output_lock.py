"""Two runs into one output folder (issue 32, item 9): the second is refused in one line naming the
first, nothing the first has in flight is removed, and a killed run's lock does not block the next.

Runs are real processes (``python -m clay.runtime.cli``) on the bundled demo engine. A run is caught
in flight by stopping it (SIGSTOP) once its ``.partial`` file exists: deterministic, where racing a
second process against a running one would depend on the machine's speed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clay.runtime import ClayEmbedder, RunOptions
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.outputs.lock import LOCK_NAME, hold_folders
from clay.runtime.outputs.publish import OutputError, ScenePaths
from clay.training.synthetic import write_scene

CLI = [sys.executable, "-m", "clay.runtime.cli"]


def clay_run(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def start_run(*args) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not path.exists() and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared (run exit code {process.poll()})"


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    process.stderr.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """Two S2 scenes of uint16 DNs as the demo engine takes them: one chip, and 3 × 3 chips."""
    folder = tmp_path_factory.mktemp("scenes")
    small = write_scene(folder / "small.tif", 512, 512, seed=1, dtype="uint16", bands=S2_BANDS)
    big = write_scene(folder / "big.tif", 1536, 1536, seed=2, dtype="uint16", bands=S2_BANDS, tile=512)
    return small, big


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first_which_finishes_intact(scenes, tmp_path):
    small, big = scenes
    out = tmp_path / "out"
    first = start_run(small, big, "--engine", DEMO_ENGINE, "--out", out, "--batch", "1", "--readers", "1")
    try:
        wait_for(out / "big.parquet.partial", first)
        first.send_signal(signal.SIGSTOP)  # in flight: its partial files are open
        partials = sorted(p.name for p in out.iterdir() if p.name.endswith(".partial"))
        for extra in ([], ["--resume"], ["--ray"]):  # partials were cleared at start with or without --resume
            second = clay_run(small, big, "--engine", DEMO_ENGINE, "--out", out, *extra)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
            assert lines[-1].startswith(f"clay-run: {out}: output folder in use by another run "
                                        f"(pid {first.pid} on {socket.gethostname()}, started 20")  # fmt: skip
            assert lines[-1].endswith("; wait for it to finish or give another --out")
            assert sorted(p.name for p in out.iterdir() if p.name.endswith(".partial")) == partials
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.send_signal(signal.SIGCONT)
        stop(first)
    assert pq.read_table(out / "small.parquet").num_rows == 1 and pq.read_table(out / "big.parquet").num_rows == 9
    assert sorted(p.name for p in out.iterdir()) == ["big.parquet", "small.parquet"]  # no partial, no lock file


def test_a_killed_runs_lock_does_not_block_the_next_run(scenes, tmp_path):
    small, big = scenes
    out = tmp_path / "out"
    first = start_run(small, big, "--engine", DEMO_ENGINE, "--out", out, "--batch", "1", "--readers", "1")
    try:
        wait_for(out / "big.parquet.partial", first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    assert (out / LOCK_NAME).exists() and f'"pid": {first.pid}' in (out / LOCK_NAME).read_text()  # left, not held
    second = clay_run(small, big, "--engine", DEMO_ENGINE, "--out", out, "--resume")
    assert second.returncode == 0, second.stderr
    assert "small: " in second.stderr and "skipped (--resume)" in second.stderr
    assert pq.read_table(out / "big.parquet").num_rows == 9
    assert sorted(p.name for p in out.iterdir()) == ["big.parquet", "small.parquet"]


def test_the_python_api_holds_the_folder_against_other_processes_and_its_own_calls(scenes, tmp_path):
    """``embed_scenes`` holds the lock from its first result to its last: a clay-run into the folder
    is refused naming this process; another call of this process on the same scene is refused, one
    on another scene of the folder goes on (a service's threads share their process's lock)."""
    small, big = scenes
    out = tmp_path / "out"
    out.mkdir()
    with ClayEmbedder(DEMO_ENGINE, options=RunOptions(readers=1)) as embedder:
        running = embedder.embed_scenes([(small, ScenePaths(out / "small.parquet"))])
        first = next(running)  # suspended after its result, inside the call
        assert first.error is None
        refused = clay_run(big, "--engine", DEMO_ENGINE, "--out", out)
        assert refused.returncode == 1, refused.stderr
        assert f"output folder in use by another run (pid {os.getpid()} on {socket.gethostname()}" in refused.stderr
        same = embedder.embed_scenes([(small, ScenePaths(out / "small.parquet"))])
        with pytest.raises(OutputError, match=r"small\.parquet: being written by another call in this process"):
            next(same)
        (other,) = embedder.embed_scenes([(big, ScenePaths(out / "big.parquet"))])
        assert other.error is None and pq.read_table(out / "big.parquet").num_rows == 9
        assert (out / LOCK_NAME).exists()  # still held by the suspended call
        assert list(running) == []
    assert not (out / LOCK_NAME).exists()
    assert clay_run(small, "--engine", DEMO_ENGINE, "--out", out / "again").returncode == 0


def test_the_ray_driver_takes_the_same_lock_before_it_starts_a_job(scenes, tmp_path):
    """``run_on_ray`` refuses a folder another process holds before touching the cluster (so no Ray is
    started here: the cluster argument is never used)."""
    from types import SimpleNamespace

    from clay.runtime.engines.choice import read_engine_metadata
    from clay.runtime.ray_job import run_on_ray
    from clay.runtime.scenes.scene import open_scene

    small, _ = scenes
    out = tmp_path / "out"
    out.mkdir()
    meta = read_engine_metadata(DEMO_ENGINE)
    scene = open_scene(small, meta, RunOptions())
    code = ("import sys; from pathlib import Path\nfrom clay.runtime.outputs.lock import hold_folders\n"
            f"with hold_folders([Path({str(out)!r})]):\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        engine = SimpleNamespace(metadata=meta)
        with pytest.raises(OutputError, match=f"output folder in use by another run \\(pid {holder.pid} "):
            next(run_on_ray(None, engine, [(scene, ScenePaths(out / "small.parquet"))], RunOptions()))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    with hold_folders([out]):  # the holder's exit let go of it
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()


def test_two_runs_probing_one_new_folder_do_not_remove_each_others_probe(tmp_path):
    """The write probe has a name of its own per call (one shared name made one of two runs starting
    together fail with 'not writable (No such file or directory)')."""
    from concurrent.futures import ThreadPoolExecutor

    from clay.runtime.api import prepare_output_folder

    folder = tmp_path / "new"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: prepare_output_folder(folder), range(400)))
    assert list(folder.iterdir()) == []


def test_a_folder_reached_through_a_link_is_the_same_folder(tmp_path):
    """Within one process a second open of the lock file would lock the process out of its own
    folder: names of one folder (a symlink, a relative path) share one lock."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with hold_folders([real]), hold_folders([tmp_path / "link"]), hold_folders([tmp_path / "link" / ".." / "real"]):
        assert (real / LOCK_NAME).exists()
    assert not (real / LOCK_NAME).exists()
