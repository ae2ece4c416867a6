"""How bands on a coarser (or other) grid are resampled onto a scene's grid: as the weights were trained.

A model learns the texture of its inputs, so a band it saw nearest-resampled should be fed
nearest-resampled, and one it saw bilinear, bilinear. The resampling a set of weights expects is
part of the engine metadata (:attr:`clay.runtime.metadata.EngineMetadata.resampling`, written by
``clay-export``); ``clay-run --resampling`` (``RunOptions.resampling``) overrides it. Which one a
scene was read with, and why, is recorded per scene in the outputs' ``clay:preprocessing``.

Sources of the values ``clay-export`` records:

- Clay v0's published weights: ``nearest``. They were trained on datacubes built by
  Clay-foundation/model ``scripts/pipeline/datacube.py`` (``make_datasets``), which calls
  ``stackstac.stack`` for S2, S1 and the DEM with no ``resampling=`` argument; stackstac's default is
  ``resampling: Resampling = Resampling.nearest`` (gjoseph92/stackstac ``stackstac/stack.py``,
  ``def stack``). So the 20 m bands, S1 and the DEM reached the model nearest-resampled onto 10 m.
- Clay v1.5's published weights: ``nearest``. Their chips were cut by Clay-foundation/stacchip
  ``stacchip/chipper.py`` (``Chipper.get_pixels_for_asset``: each asset read with
  ``src.read(window=..., out_shape=(count, chip_size, chip_size), resampling=Resampling.nearest)``,
  an asset on a grid an integer factor coarser than the item's finest repeated onto it; called by
  ``stacchip/processors/prechip.py`` ``get_chip``). ``clay-export`` records it for v1.5 engines.
- The bundled demo weights and every ``clay-train`` checkpoint: ``bilinear``, the resampling of this
  runtime's reader when they were trained (they read chips through it).
- An engine exported before the field existed: :data:`UNRECORDED_DEFAULT` (bilinear, the runtime's
  behaviour before), and the outputs say the engine did not record it.
"""

from __future__ import annotations

#: The resampling methods the reader offers (``--resampling``), by their GDAL/rasterio names.
RESAMPLING = ("nearest", "bilinear")
#: What an engine whose metadata has no ``resampling`` field is read with: the reader's only
#: method before the field existed, so that old engines give the embeddings they always gave.
UNRECORDED_DEFAULT = "bilinear"
#: Clay v0's published weights: nearest (see the module docstring for the source).
CLAY_V0 = "nearest"
#: Clay v1.5's published weights: nearest (stacchip's chipper, see the module docstring).
CLAY_V15 = "nearest"
#: Weights trained through this runtime's reader (the demo weights, ``clay-train`` checkpoints).
RUNTIME_READER = "bilinear"


def check_resampling(value: str | None, what: str = "resampling") -> None:
    """Raises ``ValueError`` (one line) unless ``value`` is ``None`` or one of :data:`RESAMPLING`."""
    if value is not None and value not in RESAMPLING:
        raise ValueError(f"{what} must be one of {', '.join(RESAMPLING)}, not {value!r}")


def choose_resampling(recorded: str | None, override: str | None, model: str = "clay-v0") -> tuple[str, str]:
    """The method a scene is read with and why, for the outputs' metadata.

    ``recorded``: the engine's ``resampling`` field (``None``: exported before it existed);
    ``override``: ``--resampling`` / ``RunOptions.resampling`` (``None``: none given); ``model``: the
    engine's (a Clay v1.5 engine exported before v1.5's was recorded is read as v1.5 was trained).
    """
    if override is not None:
        said = f"the engine's {recorded}" if recorded else "the engine records none"
        return override, f"--resampling {override} (RunOptions.resampling; {said})"
    if recorded is not None:
        return recorded, "as the engine's metadata records for its weights"
    if model == "clay-v1.5":
        return CLAY_V15, f"a Clay v1.5 engine that records none: {CLAY_V15}, as v1.5's training chips (stacchip's chipper)"
    return UNRECORDED_DEFAULT, ("the engine's metadata does not record the resampling its weights expect (an engine "
                                f"exported before the field existed): {UNRECORDED_DEFAULT}")  # fmt: skip
