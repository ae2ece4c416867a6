"""The bundled demo: a real Sentinel-2 scene and a small engine, for trying the runtime without
files of one's own (``clay-run --demo``, or the Python API)::

    from clay.runtime import ClayEmbedder
    from clay.runtime.demo import DEMO_ENGINE, DEMO_SCENE

``DEMO_ENGINE``: int8 ONNX engine of the demo weights (Clay ``tiny``, not Clay v0), the S2 band
groups, with the ``patch_embeddings`` output. ``DEMO_SCENE``: folder of the ten S2 L2A bands of
tile 48QUE, 2020-02-23, 1068² px at 10 m (licence in its NOTICE.md).
"""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_ENGINE = DEMO_DIR / "clay-demo-tiny-s2.int8.onnx"
DEMO_SCENE = DEMO_DIR / "T48QUE-20200223"

#: The name ``clay-run --engine`` and ``ClayEmbedder`` take for the bundled engine.
DEMO_NAME = "demo"


def resolve_engine(path: str | Path) -> Path:
    """``"demo"`` is the bundled engine (where no file or folder of that name exists here); any
    other path is itself."""
    path = Path(path)
    return DEMO_ENGINE if str(path) == DEMO_NAME and not path.exists() else path
