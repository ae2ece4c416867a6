"""``clay-change A B [C ...]``: per-cell cosine distance between runs of one place at different dates.

Each input is a run's patch raster (``<scene>.patches.tif``, float32 or int8) or patch rows
(``<scene>.patches.parquet``). Writes ``--out`` (a COG, one band per compared run) and a PNG
quicklook beside it, or nothing: inputs that cannot be compared are one line and exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from ..errors import first_line
from ..outputs.publish import OutputError
from .cells import ChangeError, RunCells, open_run
from .compare import check_comparable
from .distance import ChangeMap, distances, write_cog
from .quicklook import render_quicklook


def pick_reference(runs: list[RunCells], given: list[str], name: str | None) -> int:
    """The index of the reference run: the first, or the one ``name`` names (as given, its file
    name, or its date); a name that matches none or several is a :class:`ChangeError`."""
    if name is None:
        return 0
    matches = [k for k, (run, text) in enumerate(zip(runs, given))
               if name in (text, run.path.name, str(run.path.resolve()), run.date)]  # fmt: skip
    if len(matches) != 1:
        found = "no input has" if not matches else f"{len(matches)} inputs have"
        raise ChangeError(f"--reference {name}: {found} that path, file name or date "
                          f"({', '.join(f'{r.label} {r.date}' for r in runs)})")  # fmt: skip
    return matches[0]


def change(inputs: list[str], out: Path, quicklook: Path, reference: str | None = None) -> ChangeMap:
    """Read, check, compute and publish (the COG, then the PNG; if the PNG fails the COG is withdrawn)."""
    resolved = [Path(text).resolve() for text in inputs]
    twice = next((text for k, text in enumerate(inputs) if resolved[k] in resolved[:k]), None)
    if twice is not None:  # a run against itself is 0 everywhere: never the change asked for
        raise ChangeError(f"{twice}: given twice; compare runs of different dates")
    runs = [open_run(Path(text)) for text in inputs]
    check_comparable(runs)
    ref = pick_reference(runs, inputs, reference)
    others = [run for k, run in enumerate(runs) if k != ref]
    result = ChangeMap(distances(runs[ref], others), runs[ref], others)
    out.parent.mkdir(parents=True, exist_ok=True)
    quicklook.parent.mkdir(parents=True, exist_ok=True)
    write_cog(result, out)
    try:
        render_quicklook(result, quicklook)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="A B [C ...]")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("change.tif"), show_default=True,
              help="The change map: a Cloud-Optimized GeoTIFF on the runs' cell grid, one float32 band per "
                   "compared date (NaN: nodata in either run).")  # fmt: skip
@click.option("--reference", default=None, metavar="NAME",
              help="The run the others are compared with: an input as given, its file name, or its date "
                   "(default: the first).")  # fmt: skip
@click.option(
    "--quicklook",
    type=click.Path(path_type=Path),
    default=None,
    help="The PNG quicklook (default: --out with .png).",
)
def main(inputs: tuple[str, ...], out: Path, reference: str | None, quicklook: Path | None) -> None:
    """Per-cell cosine distance between clay-run outputs of one place at different dates.

    A, B, C...: each a run's patch raster (<scene>.patches.tif from clay-run --patch-raster, float32
    or int8) or patch rows (<scene>.patches.parquet from --patch-embeddings). With A B, one band: the
    distance of B from A; with A B C..., one band per date after the reference. Runs on different
    grids, or from different models, engines or sensors, are refused (nothing is resampled).
    """
    if len(inputs) < 2:
        raise click.UsageError("give two or more runs to compare (A B [C ...])")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise click.UsageError(f"--out {out}: the change map is a GeoTIFF; name it .tif")
    quicklook = quicklook or out.with_suffix(".png")
    if any(Path(text).resolve() in (out.resolve(), quicklook.resolve()) for text in inputs):
        raise click.UsageError("--out and --quicklook must not be one of the inputs")
    try:
        result = change(list(inputs), out, quicklook, reference)
    except (ChangeError, OutputError, OSError) as exc:
        sys.exit(f"clay-change: {exc}")
    except KeyboardInterrupt:
        sys.exit("clay-change: interrupted; nothing written")
    except Exception as exc:  # noqa: BLE001 - a user sees one line, never a traceback
        sys.exit(f"clay-change: internal error ({type(exc).__name__}: {first_line(exc)})")
    ref = result.reference
    for k, run in enumerate(result.others):
        values = result.values[k]
        valid = values[np.isfinite(values)]
        summary = (f"median {np.median(valid):.4f}, max {valid.max():.4f} over {valid.size} cells"
                   if valid.size else "no cell valid in both runs")  # fmt: skip
        click.echo(
            f"clay-change: {run.label} ({run.date}) from {ref.label} ({ref.date}): {summary}", err=True
        )
    click.echo(f"clay-change: wrote {out} and {quicklook}", err=True)


if __name__ == "__main__":
    main()
