"""``python -m clay.runtime.serve``: the same as ``clay-serve``."""

from .cli import main

main()
