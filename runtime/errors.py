"""The errors every part of the runtime shares, and the one-line rule for their messages.

:class:`SceneError` is what scenes (and run options that a scene cannot meet) raise for a problem the
user can fix; its message names the file. :func:`first_line` is how any error, GDAL's included,
becomes the one line ``clay-run``, ``clay-serve`` and the Python API show.
"""

from __future__ import annotations


class SceneError(ValueError):
    """A scene the runtime cannot embed; the message names the file and the problem."""


def first_line(exc: BaseException) -> str:
    """The first line of an error, taken from GDAL's own message where rasterio wraps it ("Read
    failed. See previous exception for details." carries GDAL's reason as its cause)."""
    while "See previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
