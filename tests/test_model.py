"""The Clay MAE itself: shapes, determinism, encodings and the training loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="model tests need the [training] extra")

from clay.runtime.bands import BAND_NAMES, GROUP_NAMES, date_features, latlon_features  # noqa: E402
from clay.training.model import (  # noqa: E402
    ClayMAE,
    count_parameters,
    metadata_features,
    normalise,
    posemb_sincos_1d,
    posemb_sincos_2d,
)
from clay.training.synthetic import make_chips  # noqa: E402

from .conftest import masked_training_steps  # noqa: E402


def tiny_inputs(count: int = 2, seed: int = 0):
    pixels, lonlat, date = make_chips(count, seed=seed)
    return normalise(torch.from_numpy(pixels)), torch.from_numpy(lonlat), torch.from_numpy(date)


def test_small_has_the_published_parameter_count():
    params = count_parameters(ClayMAE("small"))
    assert 126e6 < params < 129e6, params


def test_inference_path_shapes_and_determinism():
    torch.manual_seed(0)
    model = ClayMAE("tiny").eval()
    cube, lonlat, date = tiny_inputs()
    with torch.no_grad():
        chip, patches = model.encoder.embed(cube, lonlat, date, patch_embeddings=True)
        again, _ = model.encoder.embed(cube, lonlat, date)
    assert chip.shape == (2, 256)
    assert patches.shape == (2, 6, 16, 16, 256)
    assert torch.equal(chip, again)
    assert torch.allclose(patches.mean(dim=(1, 2, 3)), chip, atol=1e-5)


def test_patch_embeddings_stay_in_grid_order():
    """A change in one 32×32 patch of the rgb group must move that patch's token the most."""
    torch.manual_seed(0)
    model = ClayMAE("tiny").eval()
    cube, lonlat, date = tiny_inputs(1)
    changed = cube.clone()
    changed[:, :3, 5 * 32 : 6 * 32, 9 * 32 : 10 * 32] += 3.0
    with torch.no_grad():
        _, a = model.encoder.embed(cube, lonlat, date, patch_embeddings=True)
        _, b = model.encoder.embed(changed, lonlat, date, patch_embeddings=True)
    delta = (a - b).norm(dim=-1)[0, 0]  # rgb group, [16, 16]
    assert divmod(int(delta.argmax()), 16) == (5, 9)


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = ClayMAE("tiny").eval()
    cube, lonlat, date = tiny_inputs(1)
    with torch.no_grad():
        fast, _ = model.encoder.embed(cube, lonlat, date)
        slow, _ = model.encoder.with_attention("explicit").embed(cube, lonlat, date)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_encodings_are_float16_rounded_and_follow_the_spec():
    table = posemb_sincos_2d(16, 128)
    assert table.shape == (256, 128)
    assert torch.equal(table, table.half().float())
    # cell (y=1, x=2): first block is sin(x·ω0) = sin(2), third block sin(y·ω0) = sin(1)
    assert table[1 * 16 + 2, 0].item() == pytest.approx(math.sin(2.0), abs=1e-3)
    assert table[1 * 16 + 2, 64].item() == pytest.approx(math.sin(1.0), abs=1e-3)
    bands = posemb_sincos_1d(6, 128)
    assert bands[4, 0].item() == pytest.approx(math.sin(4.0), abs=1e-3)
    assert bands[4, 64].item() == pytest.approx(math.cos(4.0), abs=1e-3)


def test_metadata_features_match_the_spec_formulas():
    lonlat = torch.tensor([[103.75, 17.92], [-73.9, 40.7]], dtype=torch.float64)
    date = torch.tensor([[2020, 2, 23], [2017, 12, 1]], dtype=torch.float64)
    latlon, time = metadata_features(lonlat, date)
    for i in range(2):
        assert latlon[i].tolist() == pytest.approx(latlon_features(*lonlat[i].tolist()))
        assert time[i].tolist() == pytest.approx(date_features(*(int(v) for v in date[i].tolist())))


def test_masked_training_loss_is_finite_and_falls_over_20_steps():
    torch.manual_seed(0)
    model = ClayMAE("tiny")
    cube, lonlat, date = tiny_inputs(2, seed=3)
    losses, pixels, mask = masked_training_steps(model, cube, lonlat, date, torch.Generator().manual_seed(0))
    assert pixels.shape == (2, 13, 256, 1024)
    assert mask.sum(dim=1).tolist() == [1152.0, 1152.0]  # 75 % of 1536
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_subset_groups_keep_their_own_band_encoding():
    """A sar-only pass must use band-group encoding row 4, not row 0."""
    torch.manual_seed(0)
    encoder = ClayMAE("tiny").encoder.eval()
    cube, lonlat, date = tiny_inputs(1)
    sar = cube[:, [BAND_NAMES.index("VH"), BAND_NAMES.index("VV")]]
    tokens = encoder.patch_tokens(sar, ("sar",))
    bare = encoder.patch_embedding["sar"](sar)
    added = (tokens - bare)[0, :, 128:]
    expected = encoder.band_encoding[GROUP_NAMES.index("sar")].expand_as(added)
    assert torch.allclose(added, expected, atol=1e-5)
    assert not torch.allclose(added, encoder.band_encoding[0].expand_as(added), atol=1e-2)
