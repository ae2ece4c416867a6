"""Sensing dates written in folder and file names as people name downloads (``s2l2a-20200604``):
read, with where they came from recorded and a warning (issue 32, item 10)."""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.engines.choice import read_engine_metadata
from clay.runtime.errors import SceneError
from clay.runtime.scenes.dates import date_from_compact_name, file_date
from clay.runtime.scenes.scene import open_scene

from .conftest import SSL4EO


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data/s2l2a-20200604/B2.tif", date(2020, 6, 4)),
        ("data/scene/T48QUE_20200223.tif", date(2020, 2, 23)),
        ("data/2019/x_20211231_y/B02.tif", date(2021, 12, 31)),  # the nearest name holding one first
        ("data/tile_120200604/B02.tif", None),  # part of a longer number (an id)
        ("data/s2-20210231/B02.tif", None),  # not a day of the calendar
        ("data/s2-18991231/B02.tif", None),  # outside 1900-2099
    ],
)
def test_a_compact_date_standing_alone_in_a_name(path, expected):
    found = date_from_compact_name(path)
    assert (found.date if found else None) == expected
    if found:
        assert not found.trusted and found.source.startswith("the date in the name ")


def test_tags_and_product_names_come_before_a_date_in_a_name():
    path = "x/S2B_MSIL2A_20200223T032659_N0214_R018_T48QUE_20200223T074331.SAFE/s2-20210101/B02.tif"
    assert file_date(path, {}).date == date(2020, 2, 23)
    assert file_date("x/s2-20210101/B02.tif", {"": {"date": "2019-05-01"}}).date == date(2019, 5, 1)


def test_a_folder_named_with_its_date_opens_and_says_where_the_date_came_from(tmp_path):
    engine = read_engine_metadata(DEMO_ENGINE)
    scene = open_scene(SSL4EO / "s2l2a-20200604", engine)
    assert scene.date == date(2020, 6, 4)
    assert scene.applied["date"] == {"value": "2020-06-04", "source": "the date in the name s2l2a-20200604 of B2.tif"}
    (warning,) = [w for w in scene.warnings if "date 2020-06-04" in w]
    assert "may be a processing or download date; pass --date YYYY-MM-DD" in warning
    undated = tmp_path / "s2l2a"
    shutil.copytree(SSL4EO / "s2l2a-20200604", undated)
    with pytest.raises(SceneError, match="no acquisition date"):
        open_scene(undated, engine)
