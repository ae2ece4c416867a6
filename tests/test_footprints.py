"""Footprints for every affine geotransform and CRS: a property test over random grids.

Random flips, rotations up to 45°, shear, pixel sizes and scene sizes, in UTM (both hemispheres),
polar stereographic (north and south, a pole inside some grids) and EPSG:4326 (some grids across
the antimeridian). Every chip and patch geometry the runtime writes must be valid, counterclockwise,
cover its patches, and match the footprint computed here with pyproj alone (IoU ≥ 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from clay.runtime.scenes import geometry
from clay.runtime.scenes.grid import chip_grid, patch_cells
from rasterio.crs import CRS
from rasterio.transform import Affine

from .inputs import check_window, iou, pole_pixel, reference_footprint, unwrapped

#: (CRS, pixel size, a function of the random generator giving an origin in that CRS)
GRIDS = {
    "utm-north": ("EPSG:32633", 10.0, lambda r: (r.uniform(2e5, 8e5), r.uniform(1e6, 8e6))),
    "utm-south": ("EPSG:32733", 10.0, lambda r: (r.uniform(2e5, 8e5), r.uniform(2e6, 9e6))),
    "polar-north": ("EPSG:3413", 10.0, lambda r: (r.uniform(-3e6, 3e6), r.uniform(-3e6, 3e6))),
    "polar-south": ("EPSG:3031", 10.0, lambda r: (r.uniform(-3e6, 3e6), r.uniform(-3e6, 3e6))),
    "polar-at-the-pole": ("EPSG:3413", 10.0, lambda r: (r.uniform(-4000, -1000), r.uniform(1000, 4000))),
    "lonlat": ("EPSG:4326", 1e-4, lambda r: (r.uniform(-179, 179), r.uniform(-70, 70))),
    "lonlat-antimeridian": ("EPSG:4326", 1e-4, lambda r: (r.uniform(179.94, 179.99), r.uniform(-70, 70))),
}
CASES = 12  # per kind of grid


def random_transform(rng: np.random.Generator, origin: tuple[float, float], size: float) -> Affine:
    flips = Affine.scale(rng.choice([-1, 1]), rng.choice([-1, 1]))
    rotation = Affine.rotation(rng.uniform(-45, 45))
    shear = Affine.shear(rng.uniform(-20, 20), rng.uniform(-20, 20))
    return Affine.translation(*origin) @ rotation @ shear @ flips @ Affine.scale(size, -size)


def holds_a_pole(reference) -> bool:
    return np.ptp(np.asarray(reference.exterior.xy[0])) > 180


@pytest.mark.parametrize("kind", list(GRIDS))
def test_every_geometry_is_valid_counterclockwise_covers_its_patches_and_matches_its_corners(kind):
    crs_text, size, origin = GRIDS[kind]
    crs = CRS.from_user_input(crs_text)
    rng = np.random.default_rng(sum(map(ord, kind)))
    checked = crossing = poles = 0
    for _ in range(CASES):
        transform = random_transform(rng, origin(rng), size)
        height, width = (int(v) for v in rng.integers(100, 1300, 2))
        edge = str(rng.choice(["shift", "pad"]))
        for chip in chip_grid(height, width, 512, edge)[:4]:
            polygon = geometry.chip_polygon(transform, crs, chip)
            assert polygon.is_valid, (kind, transform, chip)
            parts = polygon.geoms if polygon.geom_type == "MultiPolygon" else [polygon]
            assert all(part.exterior.is_ccw for part in parts), (kind, transform, chip)
            reference, centre = reference_footprint(transform, crs_text, chip.col, chip.row, chip.width, chip.height)
            crossing += polygon.geom_type == "MultiPolygon"
            poles += holds_a_pole(reference)
            if not holds_a_pole(reference):
                assert iou(unwrapped(polygon, centre), reference) >= 0.99, (kind, transform, chip)
            patches = geometry.patch_polygons(transform, crs, chip, patch_cells(chip, 512, 32), 32)
            assert shapely.is_valid(patches).all(), (kind, transform, chip)
            covering = polygon.buffer(1e-9)
            assert all(covering.covers(p) for p in patches), (kind, transform, chip)
            # the covering bbox is the coordinates' range: a geometry cut at ±180° spans −180…180, so
            # readers' xmin <= qxmax AND xmax >= qxmin keeps it (RFC 7946's west > east they miss)
            west, south, east, north = geometry.bounding_boxes([polygon])[0]
            assert (west, south, east, north) == pytest.approx(polygon.bounds) and west <= east and south <= north
            assert polygon.geom_type == "Polygon" or (west, east) == (-180, 180)
            checked += 1
    assert checked >= CASES
    # the hard cases were met, not just allowed for
    assert crossing > 0 if kind in ("lonlat-antimeridian", "polar-at-the-pole") else crossing == 0
    assert poles > 0 if kind == "polar-at-the-pole" else poles == 0


def test_a_grid_whose_crs_cannot_place_it_is_a_footprint_error():
    ortho = CRS.from_proj4("+proj=ortho +lat_0=40 +lon_0=10 +datum=WGS84 +units=m +no_defs")
    with pytest.raises(geometry.FootprintError, match="outside the area"):
        geometry.crosses_antimeridian(Affine(100, 0, 6.35e6, 0, -100, 2e4), ortho, 512, 512)


# --- polar scenes and scenes on ±180°: every chip and patch against pyproj's own pixel centres ---------

#: (CRS, geotransform, what it is): 1024 × 1024 px at 10 m, so four 512-px chips; the pole at a
#: chip corner, on a chip edge, inside a chip, on a patch corner, just outside the scene; edges on
#: the 180° meridian (x = 0, y < 0 in EPSG:3031; x = −y, x < 0 in EPSG:3413: a diagonal).
POLAR = {
    "3031-pole-at-four-chips-corner-edges-on-180": ("EPSG:3031", Affine(10, 0, -5120, 0, -10, 5120)),
    "3413-pole-at-four-chips-corner-180-diagonal": ("EPSG:3413", Affine(10, 0, -5120, 0, -10, 5120)),
    "3031-pole-inside-a-chip-180-on-patch-edges": ("EPSG:3031", Affine(10, 0, -1920, 0, -10, 2000)),
    "3031-pole-mid-chip-edge-mid-patch-edge": ("EPSG:3031", Affine(10, 0, -2720, 0, -10, 5120)),
    "3413-pole-inside-rotated-sheared": ("EPSG:3413", Affine(10, 0, -3000, 0, -10, 7000) @ Affine.rotation(30) @ Affine.shear(10, 0)),
    "3413-pole-one-pixel-outside": ("EPSG:3413", Affine(10, 0, 10, 0, -10, 5120)),
    "3031-near-pole-south-up": ("EPSG:3031", Affine(-10, 0, 20480, 0, 10, -1000)),
    "4326-west-edge-on-180": ("EPSG:4326", Affine(1e-4, 0, 180.0, 0, -1e-4, 60.0)),
    "4326-east-edge-on-180": ("EPSG:4326", Affine(1e-4, 0, 180.0 - 1024e-4, 0, -1e-4, 60.0)),
    "4326-west-edge-on-minus-180": ("EPSG:4326", Affine(1e-4, 0, -180.0, 0, -1e-4, -60.0)),
}


@pytest.mark.parametrize("name", list(POLAR))
def test_polar_and_180_chips_and_patches_hold_their_pixels_and_nothing_else(name):
    """Was: chips with a corner at the pole or an edge on 180° self-intersecting, patches along 180°
    slivers, and near the pole the straight lon/lat edges cut off pixel centres."""
    crs_text, transform = POLAR[name]
    crs = CRS.from_user_input(crs_text)
    holding = multipolygons = 0
    for chip in chip_grid(1024, 1024, 512, "shift"):
        polygon = geometry.chip_polygon(transform, crs, chip)
        holding += check_window(polygon, transform, crs_text, chip.col, chip.row, chip.width, chip.height, step=4)
        multipolygons += polygon.geom_type == "MultiPolygon"
        cells = patch_cells(chip, 512, 32)
        patches = geometry.patch_polygons(transform, crs, chip, cells, 32)
        covering = polygon.buffer(1e-9)
        for cell, patch in zip(cells, patches):
            check_window(patch, transform, crs_text, cell.col, cell.row, 32, 32, step=4)
            assert covering.covers(patch)
        west, south, east, north = geometry.bounding_boxes([polygon])[0]
        assert (west, south, east, north) == pytest.approx(polygon.bounds)
        assert west <= east and (polygon.geom_type == "Polygon" or (west, east) == (-180, 180))
    pole = pole_pixel(transform, crs_text)
    scene_holds_pole = pole is not None and 0 < pole[0] < 1024 and 0 < pole[1] < 1024
    assert holding == ("pole-inside" in name)
    multipart = geometry.crosses_antimeridian(transform, crs, 1024, 1024)
    # the scene's files say MultiPolygon exactly when some geometry is one (or the scene holds a pole)
    assert multipart == (scene_holds_pole or multipolygons > 0)
    if name.startswith("4326"):  # a scene on ±180° lies on one side of it: one polygon, not cut
        assert not multipart and multipolygons == 0
