"""Values that cannot be what a band claims to be refuse the scene (issue 32, item 5), and dates
Clay v0's encoding cannot tell apart are said once per run and recorded per scene (item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.bands import DATE_ALIASES, S2_BANDS, TRAINING_YEARS, date_aliases, date_features
from clay.runtime.demo import DEMO_ENGINE
from clay.training.synthetic import write_scene
from rasterio.transform import from_origin

pytest.importorskip("torch", reason="the 13-band engine is exported with the [export] extra")


@pytest.fixture(scope="module")
def engine13(checkpoint, tmp_path_factory) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("engine13")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, check=False), log=lambda _: None)
    return out


def clay_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clay.runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def l1c_stack(path: Path) -> Path:
    """A Sentinel-2 L1C stack as users export it: B01…B12 with B09 and B10 (13 bands), uint16 DNs of
    1550-3550, no band descriptions."""
    rng = np.random.default_rng(0)
    data = rng.integers(1550, 3550, size=(13, 600, 600), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=13, dtype="uint16",
                       crs="EPSG:32648", transform=from_origin(362600, 1987080, 10, 10)) as dst:  # fmt: skip
        dst.write(data)
        dst.update_tags(date="2021-05-06")
    return path


def test_an_unnamed_l1c_stack_is_refused_where_its_dns_would_be_sar(engine13, tmp_path):
    out = tmp_path / "out"
    result = clay_run(l1c_stack(tmp_path / "S2_L1C_stack.tif"), "--engine", engine13, "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "S2_L1C_stack.tif: SAR band VH holds values that are not backscatter" in last
    assert "name its bands" in last
    assert not list(out.glob("*.parquet")) if out.exists() else True


def test_a_dem_band_above_every_summit_is_refused(engine13, tmp_path):
    path = write_scene(tmp_path / "stack.tif", 600, 600, seed=2)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((600, 600), 15000.0, np.float32), 13)
    result = clay_run(path, "--engine", engine13, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "DEM is mostly above 8900 m" in result.stderr.strip().splitlines()[-1]


def test_a_named_clay_order_stack_still_embeds_and_an_unnamed_one_records_the_order_assumed(engine13, tmp_path):
    named = write_scene(tmp_path / "named.tif", 600, 600, seed=4)
    unnamed = write_scene(tmp_path / "unnamed.tif", 600, 600, seed=4, band_descriptions=False)
    result = clay_run(named, unnamed, "--engine", engine13, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    applied = json.loads(pq.read_schema(tmp_path / "out" / "unnamed.parquet").metadata[b"clay:preprocessing"])
    assert applied["band_order"].startswith("unnamed.tif: 13 bands without descriptions, taken in Clay's order")
    named_applied = json.loads(pq.read_schema(tmp_path / "out" / "named.parquet").metadata[b"clay:preprocessing"])
    assert "band_order" not in named_applied


@pytest.mark.parametrize(("day", "kinds"), [((2035, 5, 6), {"year"}), ((2020, 12, 3), {"month"}),
                                            ((2021, 1, 31), {"day"}), ((1994, 12, 31), {"year", "month", "day"}),
                                            ((2017, 6, 30), set()), ((2023, 11, 30), set())])  # fmt: skip
def test_each_alias_claimed_is_one_the_encoding_really_makes(day, kinds):
    found = date_aliases(*day)
    assert set(found) == kinds
    year, month, dom = day
    if "year" in found and "encodes as 20" in found["year"]:
        twin = int(found["year"].rsplit(" ", 1)[1])
        assert TRAINING_YEARS[0] <= twin <= TRAINING_YEARS[1]
        assert date_features(year, month, dom)[0] == pytest.approx(date_features(twin, month, dom)[0], abs=1e-9)
    if "month" in found:
        assert date_features(year, 12, dom)[1] == pytest.approx(date_features(year, 1, dom)[1], abs=1e-9)
    if "day" in found:
        assert date_features(year, month, 31)[2] == pytest.approx(date_features(year, month, 1)[2], abs=1e-9)
    # and a date inside the training years, not December, not the 31st, has no twin among them
    if not kinds:
        own = date_features(*day)
        others = [date_features(y, m, d) for y in range(2017, 2024) for m in range(1, 13) for d in range(1, 32)
                  if (y, m, d) != day]  # fmt: skip
        assert min(max(abs(a - b) for a, b in zip(own, other)) for other in others) > 1e-6


def test_dates_the_model_cannot_tell_apart_are_said_once_per_run_and_recorded(tmp_path):
    scenes = [write_scene(tmp_path / f"s{i}.tif", 520, 520, seed=i, dtype="uint16", bands=S2_BANDS, date="2035-12-05")
              for i in range(2)]  # fmt: skip
    result = clay_run(*scenes, "--engine", DEMO_ENGINE, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count(DATE_ALIASES["year"]) == 1 and result.stderr.count(DATE_ALIASES["month"]) == 1
    for i in range(2):
        applied = json.loads(pq.read_schema(tmp_path / "out" / f"s{i}.parquet").metadata[b"clay:preprocessing"])
        assert applied["date"]["model_encoding"] == "2035 encodes as 2017; December encodes as January"
