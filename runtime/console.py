"""What every console script shares: a one-line message when its install extra is missing, and
logging set up for a terminal.

Used by ``clay-train``, ``clay-export``, ``clay-bench`` and ``clay-run --ray`` before they import
their own stack, so that on the plain, torch-free install they say which extra to install instead
of dying with an ImportError traceback. Application-level only: library code never configures logging.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import sys
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

#: What each extra brings, as import names (``pyproject.toml``'s optional dependencies).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "training": ("torch", "lightning", "einops", "jsonargparse"),
    "export": ("torch", "einops", "onnx", "onnxsim", "polygraphy"),
    "bench": ("torch", "einops", "onnx", "onnxsim", "polygraphy", "matplotlib"),
    "serve": ("kserve", "prometheus_client", "fastapi", "grpc", "orjson"),
    "ray": ("ray", "pandas", "fsspec"),  # ray[data]: Ray Data needs pandas and fsspec beside ray
    "search": ("lancedb",),
}
MISSING_EXTRA_EXIT = 2
DISTRIBUTION = "clay-runtime"

# Advice that third-party libraries log and that does not apply to how we call them: ONNX Runtime's
# quantiser recommends pre-processing before *static* quantisation; its transformer optimizer
# expects graphs produced by PyTorch's exporter to be named "pytorch" (ours are named clay-export).
_IRRELEVANT_ADVICE = ("Please consider to run pre-processing before quantization", "Model producer not matched")


def missing_modules(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The import names of ``extra`` that cannot be found (nothing is imported)."""
    missing = []
    for name in modules or EXTRA_MODULES[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def installed_from() -> str:
    """What ``pip install`` should name to add an extra to this install: the folder it was installed
    from (``pip install .`` or ``-e .`` of a checkout, as pip records it in ``direct_url.json``) while
    that folder exists, else the distribution's name."""
    # every copy of the metadata on the path: a checkout's build leaves a clay_runtime.egg-info
    # without the record beside the sources, which sys.path may list before site-packages
    texts = [d.read_text("direct_url.json") for d in importlib.metadata.distributions(name=DISTRIBUTION)]
    try:
        record = json.loads(next((t for t in texts if t), "{}"))
    except ValueError:
        record = {}
    url = urllib.parse.urlparse(record.get("url", "") if isinstance(record, dict) else "")
    folder = Path(urllib.request.url2pathname(url.path)) if url.scheme == "file" else None
    return str(folder) if folder is not None and (folder / "pyproject.toml").is_file() else DISTRIBUTION


def install_command(extra: str, missing: Sequence[str]) -> str:
    """The command that installs ``extra`` here; torch first where it is missing, as the README
    says (pip would otherwise pick a build: the CPU or the CUDA one is the user's choice)."""
    torch_first = "pip install torch && " if "torch" in missing else ""
    return f'{torch_first}pip install "{installed_from()}[{extra}]"'


def require_extra(command: str, extra: str) -> None:
    """Exit with one line and code 2 when the extra ``command`` needs is not installed."""
    missing = missing_modules(extra)
    if missing:
        torch_note = "torch first: the CPU or CUDA build you want; " if "torch" in missing else ""
        sys.stderr.write(f"{command} needs the {extra} extra: {install_command(extra, missing)} "
                         f"({torch_note}missing: {', '.join(missing)})\n")  # fmt: skip
        sys.exit(MISSING_EXTRA_EXIT)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_IRRELEVANT_ADVICE)


def setup_logging(command: str, level: int = logging.WARNING) -> None:
    """Warnings and errors as ``command: message`` lines on stderr, known-irrelevant advice dropped."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{command}: %(message)s"))
    handler.addFilter(_DropAdvice())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_known_warnings()


def quiet_known_warnings() -> None:
    """For the command-line tools: drop Python warnings the runtime answers itself. rasterio warns
    (two lines) on opening a file without a geotransform; the runtime checks georeferencing and
    refuses such a file in one line (:func:`clay.runtime.scenes.headers.georeferencing_problem`)."""
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")
