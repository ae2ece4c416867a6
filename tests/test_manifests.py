"""Scenes named by text manifests and GDAL URIs, checked with local files only (no network): a
``/vsizip/`` path is a GDAL URI that this machine can read.

Runs on the plain runtime: the bundled demo engine and generated uint16 S2 scenes, no torch.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.errors import SceneError
from clay.runtime.scenes.discovery import discover_scenes
from clay.runtime.scenes.inputs import GdalPath, scene_path
from clay.training.synthetic import write_scene


def s2_scene(path: Path, seed: int = 0) -> Path:
    return write_scene(path, 700, 512, seed=seed, dtype="uint16", bands=S2_BANDS)


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "gdal", "name"),
    [
        ("s3://bucket/tiles/T48QUE.tif", "/vsis3/bucket/tiles/T48QUE.tif", "T48QUE"),
        ("https://host.org/a/b/scene.tif?sig=1", "/vsicurl/https://host.org/a/b/scene.tif?sig=1", "scene"),
        ("gs://bucket/x.tiff", "/vsigs/bucket/x.tiff", "x"),
        ("/vsis3/bucket/key/s2.tif", "/vsis3/bucket/key/s2.tif", "s2"),
    ],
)
def test_uris_become_gdal_paths_that_keep_the_users_spelling(text, gdal, name):
    path = scene_path(text)
    assert isinstance(path, GdalPath) and str(path) == text and path.gdal == gdal
    (scene,) = discover_scenes([text])
    assert scene.name == name and scene.files == (path,)
    assert scene_path("scenes/a.tif") == Path("scenes/a.tif")  # a local path stays a Path


def test_a_manifest_lists_one_scene_a_line_relative_to_itself(tmp_path):
    data = tmp_path / "data"
    (data / "bands").mkdir(parents=True)
    a, b = s2_scene(data / "a.tif", 1), s2_scene(data / "b.tif", 2)
    for band in S2_BANDS[:2]:  # a folder of per-band files is one scene (a line is never split or merged)
        write_scene(data / "bands" / f"{band}.tif", 600, 600, dtype="uint16", bands=(band,))
    manifest = data / "scenes.txt"
    manifest.write_text(f"# scenes to embed\n\nb.tif\n{a}\n  bands  \ns3://bucket/c.tif\n")
    scenes = discover_scenes([manifest])
    assert [s.name for s in scenes] == ["b", "a", "bands", "c"]
    assert scenes[0].files == (b,) and scenes[2].path == data / "bands" and len(scenes[2].files) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(SceneError, match="empty.txt: the manifest lists no scene"):
        discover_scenes([empty])


def test_a_gdal_uri_in_a_manifest_embeds_like_the_file(tmp_path):
    scene = s2_scene(tmp_path / "plain.tif", 3)
    with zipfile.ZipFile(tmp_path / "archive.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.write(scene, "zipped.tif")
    uri = f"/vsizip/{tmp_path / 'archive.zip'}/zipped.tif"
    (tmp_path / "list.txt").write_text(f"{uri}\nplain.tif\n")
    result = clay_run(tmp_path / "list.txt", "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    zipped, plain = pq.read_table(tmp_path / "out" / "zipped.parquet"), pq.read_table(tmp_path / "out" / "plain.parquet")
    assert zipped["source_url"][0].as_py() == uri and plain["source_url"][0].as_py() == str(scene)
    assert zipped["geometry"].to_pylist() == plain["geometry"].to_pylist()
    assert np.array_equal(np.stack(zipped["embeddings"].to_numpy(zero_copy_only=False)),
                          np.stack(plain["embeddings"].to_numpy(zero_copy_only=False)))  # fmt: skip
    missing = clay_run(f"/vsizip/{tmp_path / 'archive.zip'}/absent.tif", "--engine", DEMO_ENGINE, "--out", tmp_path / "x")
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "absent.tif: not a readable GeoTIFF" in lines[-1]
