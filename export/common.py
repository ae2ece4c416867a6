"""What every export shares, whichever Clay it exports: its errors, its report, the staging folder
and the loop over the format table's builders. Its own module so that the v0 orchestration
(:mod:`.artifacts`) and the v1.5 one (:mod:`.v15`) both use it and neither imports the other back.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from clay.runtime.formats import ArtifactFormat

from . import check
from .builders import BUILDERS, BuildJob, FormatUnavailable
from .tensorrt_build import PlanBuildError


class ExportError(RuntimeError):
    """A one-line reason why the export could not be done."""


class RefusedInput(ExportError):
    """Input the export refuses before writing anything (a checkpoint of no known Clay, a missing
    weight, an option that does not apply): ``clay-export`` exits with status 2."""


@dataclass
class ExportReport:
    artifacts: list[Path] = field(default_factory=list)
    scores: list[check.OutputScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # what was exported: weights, bands, groups, outputs


def staging_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".clay-export-", dir=out))
    except OSError as exc:
        raise ExportError(f"{out}: cannot write there ({exc.strerror or exc})") from None


def build_formats(job: BuildJob, formats: tuple[ArtifactFormat, ...], report: ExportReport) -> list[tuple[Path, ArtifactFormat]]:
    """Every format in table order (a format may read an earlier one's file); the unavailable ones
    become a note saying what to install (then the same command builds them)."""
    built = []
    for fmt in formats:
        try:
            written = BUILDERS[fmt.name](job, fmt)
        except FormatUnavailable as reason:
            report.notes.append(f"no {fmt.file_name}: {reason}; the other artifacts are kept")
            continue
        except PlanBuildError as exc:
            raise ExportError(f"{fmt.file_name}: {exc}") from None
        built.append((written[0], fmt))
        report.artifacts += written
    return built


def check_built(job: BuildJob, built: list[tuple[Path, ArtifactFormat]], feeds, expected, report: ExportReport,
                label: str = "") -> None:  # fmt: skip
    """Every built artifact run on the same ``feeds`` against the eager fp32 ``expected`` outputs
    (Polygraphy, or the runtime's engine where it has no runner); an artifact that cannot run here
    is a note; any chip below its format's bound fails the export (``label``: the artifact's place,
    e.g. a v1.5 sensor's folder, in the message)."""
    for path, fmt in built:
        skipped = check.unchecked_reason(path, fmt)
        if skipped:
            report.notes.append(f"{path.name} is not checked against eager fp32 here: {skipped}")
            continue
        scores = check.check_artifact(path, fmt, feeds, expected)
        report.scores.extend(scores)
        for s in scores:
            job.log(s.line())
    failed = [s for s in report.scores if not s.passed]
    if failed:
        worst = failed[0]
        raise ExportError(
            f"{label}{worst.artifact} {worst.output}: min cosine {worst.min_cosine:.6f} is below {worst.bound}"
            + ("" if worst.finite else " (non-finite values)") + "; nothing was written"
        )
