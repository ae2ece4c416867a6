"""What every console script shares: a one-line message when its install extra is missing, and
logging set up for a terminal.

Used by ``clay-train``, ``clay-export``, ``clay-bench`` and ``clay-run --ray`` before they import
their own stack, so that on the plain, torch-free install they say which extra to install instead
of dying with an ImportError traceback. Application-level only: library code never configures logging.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Sequence

#: What each extra brings, as import names (``pyproject.toml``'s optional dependencies).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "training": ("torch", "lightning", "einops", "jsonargparse"),
    "export": ("torch", "einops", "onnx", "onnxsim", "polygraphy"),
    "bench": ("torch", "einops", "onnx", "onnxsim", "polygraphy", "matplotlib"),
    "serve": ("kserve", "prometheus_client", "fastapi", "grpc", "orjson"),
    "ray": ("ray", "pandas", "fsspec"),  # ray[data]: Ray Data needs pandas and fsspec beside ray
}
MISSING_EXTRA_EXIT = 2

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


def require_extra(command: str, extra: str) -> None:
    """Exit with one line and code 2 when the extra ``command`` needs is not installed."""
    missing = missing_modules(extra)
    if missing:
        sys.stderr.write(
            f'{command} needs the {extra} extra: pip install "clay-runtime[{extra}]" (missing: {", ".join(missing)})\n'
        )
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
