"""Whether runs can be compared cell by cell, and if not, what differs, in one line.

Cosine distances mean change only between vectors of one model, from one engine, of one sensor's
bands, on one grid: anything else measures the difference of the tools or a misregistration. So
``clay-change`` refuses, and never resamples: the user re-runs ``clay-run`` on one grid with one
engine. Which engine-record fields (:class:`clay.runtime.metadata.EngineMetadata`) count as which:
"""

from __future__ import annotations

from .cells import ChangeError, RunCells

#: The model: which weights made the vectors (a checkpoint path may differ across machines: its SHA-256 may not).
MODEL_FIELDS = ("model", "model_size", "weights", "checkpoint_sha256", "dim", "chip_size", "patch_size")
#: The sensor: which bands, in which units, grouped how (Clay v1.5: the sensor the constants were folded for).
SENSOR_FIELDS = ("sensor", "bands", "groups", "input_units", "band_wavelengths", "gsd")
#: The engine: how the model was run (precision, normalisation folded in, resampling of the weights).
ENGINE_FIELDS = ("precision", "band_means", "band_stds", "resampling", "preprocessing")
#: Two geotransforms are one grid when every coefficient agrees to this fraction of a cell's side
#: (float rounding of a transform written by GDAL and read back through JSON).
GRID_TOLERANCE = 1e-6


#: At most this many differences are listed (the first say the most: model before sensor before engine).
MAX_LISTED = 4


def _short(value) -> str:
    if value in (None, "", (), [], {}):
        return "none"
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def grid_differences(a: RunCells, b: RunCells) -> list[str]:
    ga, gb = a.grid, b.grid
    found = []
    if ga.crs != gb.crs:
        found.append(f"CRS {ga.crs.to_string()} vs {gb.crs.to_string()}")
    side = max(abs(ga.transform.a), abs(ga.transform.e), 1e-12)
    if not ga.transform.almost_equals(gb.transform, precision=side * GRID_TOLERANCE):
        if (ga.transform.a, ga.transform.b, ga.transform.d, ga.transform.e) != (gb.transform.a, gb.transform.b,
                                                                                 gb.transform.d, gb.transform.e):  # fmt: skip
            found.append(
                f"cell size {ga.transform.a:g} x {ga.transform.e:g} vs {gb.transform.a:g} x {gb.transform.e:g}"
            )
        if (ga.transform.c, ga.transform.f) != (gb.transform.c, gb.transform.f):
            found.append(
                f"origin ({ga.transform.c:.3f}, {ga.transform.f:.3f}) vs ({gb.transform.c:.3f}, {gb.transform.f:.3f})"
            )
    if (ga.width, ga.height) != (gb.width, gb.height):
        found.append(f"size {ga.width} x {ga.height} vs {gb.width} x {gb.height} cells")
    return found


def record_differences(a: RunCells, b: RunCells) -> list[str]:
    """What differs in the runs' engine records, the decisive first: two models differ in everything
    else too, so then only the model fields are named."""
    found = []
    for kind, names in (("model", MODEL_FIELDS), ("sensor", SENSOR_FIELDS), ("engine", ENGINE_FIELDS)):
        if kind != "model" and a.engine.get("model") != b.engine.get("model"):
            break
        for name in names:
            va, vb = a.engine.get(name), b.engine.get(name)
            if va != vb:
                label = kind if name == kind else f"{kind} {name}"
                found.append(f"{label} {_short(va)} vs {_short(vb)}")
    return found


def check_comparable(runs: list[RunCells]) -> None:
    """Raise :class:`ChangeError` naming the first pair of runs that differ and everything that
    differs between them (grid, model, sensor, engine)."""
    first = runs[0]
    for other in runs[1:]:
        grid, record = grid_differences(first, other), record_differences(first, other)
        if grid or record:
            parts = ([f"grid: {'; '.join(grid)}"] if grid else []) + record
            if len(parts) > MAX_LISTED:
                parts = [*parts[:MAX_LISTED], f"and {len(parts) - MAX_LISTED} more"]
            advice = "re-run clay-run on one grid with one engine; clay-change does not resample"
            raise ChangeError(
                f"{first.path} and {other.path} cannot be compared: {'; '.join(parts)} ({advice})"
            )
