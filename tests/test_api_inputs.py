"""What a service embedding the runtime needs (issue 32, item 11): the error classes from
``clay.runtime``, the bundled engine by name, and scenes given as bytes or as an open dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.training.synthetic import write_scene

PRODUCT = "S2A_MSIL2A_20210506T033541_N0300_R061_T48QUE_20210506T074331.tif"


def test_every_error_the_api_raises_is_importable_from_clay_runtime():
    import clay.runtime as runtime

    for name in ("SceneError", "EngineError", "EngineUnavailable", "OutputError", "MetadataError", "RayJobError"):
        assert name in runtime.__all__ and issubclass(getattr(runtime, name), Exception), name
    assert issubclass(runtime.EngineUnavailable, runtime.EngineError)


def test_engine_demo_names_the_bundled_engine(tmp_path):
    from clay.runtime import ClayEmbedder

    with ClayEmbedder("demo") as embedder:
        assert embedder.engine.path == DEMO_ENGINE
    scene = write_scene(tmp_path / "s.tif", 520, 520, dtype="uint16", bands=S2_BANDS)
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(scene), "--engine", "demo", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"engine {DEMO_ENGINE.name}" in result.stderr and (tmp_path / "out" / "s.parquet").is_file()


def test_a_scene_as_bytes_or_an_open_dataset_embeds_as_its_file(tmp_path):
    from clay.runtime import ClayEmbedder, RunOptions, SceneError

    path = write_scene(tmp_path / PRODUCT, 700, 600, dtype="uint16", bands=S2_BANDS, with_date_tag=False)
    data = path.read_bytes()
    with ClayEmbedder(DEMO_ENGINE) as embedder:
        from_file = embedder.embed_scene(path)
        from_bytes = embedder.embed_scene(data, name=PRODUCT)  # the date from the product name it had
        with pytest.raises(SceneError, match="no acquisition date"):
            embedder.embed_scene(data)  # nameless bytes without a date tag
        dated = embedder.embed_scene(data, RunOptions(date=from_file["date"][0].as_py()))
        with rasterio.MemoryFile(data) as memory, memory.open() as dataset:
            from_dataset = embedder.embed_scene(dataset, RunOptions(date=from_file["date"][0].as_py()))
        with rasterio.open(path) as dataset:
            from_open_file = embedder.embed_scene(dataset)
        closed = rasterio.open(path)
        closed.close()
        with pytest.raises(SceneError, match="the dataset is closed"):
            embedder.embed_scene(closed)
    expected = np.stack(from_file["embeddings"].to_numpy(zero_copy_only=False))
    for table in (from_bytes, dated, from_dataset, from_open_file):
        assert table["row"].to_pylist() == from_file["row"].to_pylist()
        assert table["date"].to_pylist() == from_file["date"].to_pylist()
        assert table["geometry"].to_pylist() == from_file["geometry"].to_pylist()
        np.testing.assert_array_equal(np.stack(table["embeddings"].to_numpy(zero_copy_only=False)), expected)
    assert from_bytes["source_url"][0].as_py().startswith("/vsimem/") and from_bytes["source_url"][0].as_py().endswith(PRODUCT)
    assert from_open_file["source_url"][0].as_py() == from_file["source_url"][0].as_py()


def test_run_options_take_a_date_as_clay_run_does_and_name_a_wrong_one(tmp_path):
    from datetime import date

    from clay.runtime import ClayEmbedder, RunOptions

    assert RunOptions(date="2020-02-23").date == date(2020, 2, 23)
    for wrong in ("23/02/2020", 20200223):
        with pytest.raises(ValueError, match="date must be a datetime.date or YYYY-MM-DD"):
            RunOptions(date=wrong)
    for wrong in (float("nan"), float("inf")):  # NaN DNs would blank every S2 chip
        with pytest.raises(ValueError, match="s2_offset must be a finite number"):
            RunOptions(s2_offset=wrong)
    path = write_scene(tmp_path / "undated.tif", 520, 520, dtype="uint16", bands=S2_BANDS, with_date_tag=False)
    with ClayEmbedder(DEMO_ENGINE) as embedder, rasterio.open(path) as dataset:
        table = embedder.embed_scene(dataset, RunOptions(date="2020-02-23"))
        assert table["date"][0].as_py() == date(2020, 2, 23)
        with pytest.raises(ValueError, match="name= gives bytes the file name they had"):
            embedder.embed_scene(dataset, name=PRODUCT)
