"""Clay model sizes (spec table "Sizes"): plain numbers, importable without torch (``clay-export
--help`` lists them without loading the model code)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSize:
    """Hyper-parameters of one model size (spec table "Sizes")."""

    name: str
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    decoder_dim_head: int
    decoder_mlp_ratio: int

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize("tiny", 256, 4, 4, 64, 2, 128, 2, 2, 64, 2),
    "small": ModelSize("small", 768, 12, 12, 64, 4, 512, 8, 8, 64, 4),
    "medium": ModelSize("medium", 1024, 24, 16, 64, 4, 512, 8, 16, 64, 4),
    "large": ModelSize("large", 1280, 32, 16, 64, 4, 512, 8, 16, 64, 4),
}


def get_size(name: str) -> ModelSize:
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(SIZES)}") from None


@dataclass(frozen=True)
class V15Size:
    """A Clay v1.5 encoder size of ``claymodel/model.py`` (``clay_mae_tiny`` … ``clay_mae_large``)."""

    name: str
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: int


V15_SIZES: dict[str, V15Size] = {
    s.name: s
    for s in (
        V15Size("tiny", 192, 6, 4, 48, 2),
        V15Size("small", 384, 6, 6, 64, 2),
        V15Size("base", 768, 12, 12, 64, 4),
        V15Size("large", 1024, 24, 16, 64, 4),  # the published clay-v1.5.ckpt
    )
}
