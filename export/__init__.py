"""``clay-export``'s package. Importing it imports nothing heavy: :func:`main` (the console script)
first checks that the export extra is installed and says which to install if not."""


def main() -> None:
    from clay.runtime.console import require_extra

    require_extra("clay-export", "export")
    from .cli import main as run

    run()
