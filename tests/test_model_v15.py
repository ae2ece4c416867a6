"""Clay v1.5: our encoder against the official code, the published checkpoint layout, the sensor table
and the input conventions, each checked against an independent source (the official classes,
Clay's metadata.yaml, Python's calendar)."""

from __future__ import annotations

import datetime
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from clay.runtime.sensors import SENSORS, SensorError, metadata_values, parse_sensors
from clay.training.checkpoint import CheckpointError

from .official_clay import lightning_checkpoint, load_official, official_embedding_encoder, official_tiny_mae

METADATA_YAML = Path(__file__).parent / "data" / "clay-v1.5" / "metadata.yaml"


@pytest.fixture(scope="module")
def official_mae():
    return official_tiny_mae(seed=3)


@pytest.fixture(scope="module")
def v15_checkpoint(official_mae, tmp_path_factory) -> Path:
    return lightning_checkpoint(official_mae, tmp_path_factory.mktemp("v15") / "clay-v1.5-tiny.ckpt")


def official_datacube(sensor_name: str, batch: int, chip: int, seed: int) -> dict:
    """Normalised chips and their metadata as the official datamodule hands them to the encoder."""
    sensor = SENSORS[sensor_name]
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, len(sensor.bands), chip, chip, generator=generator)
    values = torch.tensor([metadata_values(10.0 * i - 70.0, 5.0 * i + 40.0, datetime.date(2022, 3 + i, 10))
                           for i in range(batch)], dtype=torch.float32)  # fmt: skip
    return {
        "pixels": pixels,
        "time": values[:, :4],
        "latlon": values[:, 4:],
        # as ClayMAE.forward makes them from metadata.yaml: torch.tensor(list(wavelength.values())), torch.tensor(gsd)
        "waves": torch.tensor(list(sensor.wavelengths)),
        "gsd": torch.tensor(sensor.gsd),
    }


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("sensor", "chip"), [("sentinel-2-l2a", 256), ("landsat-c2l2-sr", 128), ("sentinel-1-rtc", 64)])
def test_our_encoder_equals_the_official_encoder(official_mae, v15_checkpoint, sensor, chip, torch_threads):
    from clay.training.checkpoint_v15 import load_encoder_v15

    ours = load_encoder_v15(v15_checkpoint)
    theirs = official_embedding_encoder(official_mae)
    cube = official_datacube(sensor, batch=2, chip=chip, seed=11)
    with torch.no_grad():
        expected = theirs(cube)[0]  # all tokens, CLS first
        got = ours(cube["pixels"], cube["time"], cube["latlon"], SENSORS[sensor].wavelengths, SENSORS[sensor].gsd)
    assert got.shape == expected.shape == (2, 1 + (chip // 8) ** 2, 192)
    assert cosine(got[:, 0], expected[:, 0]).min() >= 0.99999
    assert float((got - expected).abs().max()) <= 1e-5
    # and not trivially: another gsd gives another embedding
    with torch.no_grad():
        other = ours(cube["pixels"], cube["time"], cube["latlon"], SENSORS[sensor].wavelengths, SENSORS[sensor].gsd * 3)
    assert float((other[:, 0] - expected[:, 0]).abs().max()) > 1e-3


def test_the_checkpoint_keeps_the_encoder_and_ignores_decoder_teacher_and_proj(official_mae, v15_checkpoint):
    from clay.training.checkpoint_v15 import CLAY_V15, load_least_trust, model_state, which_model

    state = model_state(load_least_trust(v15_checkpoint))
    assert which_model(state) == CLAY_V15
    assert {k.split(".")[0] for k in state} == {"encoder", "decoder", "teacher", "proj"}
    from clay.training.checkpoint_v15 import load_encoder_v15

    encoder = load_encoder_v15(v15_checkpoint)
    assert encoder.size.name == "tiny"
    official = official_mae.encoder.state_dict()
    assert set(encoder.state_dict()) == set(official)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, official[key]), key


def test_a_v15_checkpoint_with_a_missing_key_is_refused_naming_it(official_mae, tmp_path):
    from clay.training.checkpoint_v15 import load_encoder_v15

    path = lightning_checkpoint(official_mae, tmp_path / "broken.ckpt", drop=("model.encoder.transformer.layers.2.0.to_out.weight",))
    with pytest.raises(CheckpointError) as caught:
        load_encoder_v15(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "1 missing: model.encoder.transformer.layers.2.0.to_out.weight" in message
    assert "\n" not in message


class Marker:
    """An object whose unpickling, if it ran, would leave a trace."""

    ran = False

    def __setstate__(self, state):
        Marker.ran = True


def test_objects_torchs_safe_loader_refuses_are_read_without_running_them(official_mae, tmp_path, caplog):
    from clay.training.checkpoint_v15 import load_encoder_v15, load_least_trust

    path = lightning_checkpoint(official_mae, tmp_path / "objects.ckpt", extra={"callbacks": {"x": Marker()}})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the premise: the safe loader refuses this file
    Marker.ran = False
    record = load_least_trust(path)
    assert not Marker.ran and type(record["callbacks"]["x"]).__name__ == "_Inert"
    assert "weights_only=False" in caplog.text
    encoder = load_encoder_v15(path)
    assert torch.equal(encoder.cls_token, official_mae.encoder.cls_token)


def test_our_sensor_table_is_claymodels_metadata_yaml():
    import yaml

    table = yaml.safe_load(METADATA_YAML.read_text())
    assert set(table) == set(SENSORS)
    for name, row in table.items():
        sensor = SENSORS[name]
        assert list(sensor.clay_bands) == row["band_order"], name
        assert sensor.gsd == float(row["gsd"])
        for field, key in (("wavelengths", "wavelength"), ("means", "mean"), ("stds", "std")):
            assert list(getattr(sensor, field)) == [float(row["bands"][key][b]) for b in row["band_order"]], (name, field)


def test_training_conventions_put_longitude_first_noon_and_the_iso_week():
    lon, lat, day = -122.5, 37.75, datetime.date(2021, 1, 3)  # a Sunday: ISO week 53 of 2020
    values = metadata_values(lon, lat, day, "training")
    week = 53 * 2 * math.pi / 52
    assert values[:4] == pytest.approx((math.sin(week), math.cos(week), math.sin(math.pi), math.cos(math.pi)))
    assert values[4:] == pytest.approx((math.sin(math.radians(lon)), math.cos(math.radians(lon)),
                                        math.sin(math.radians(lat)), math.cos(math.radians(lat))))  # fmt: skip
    tutorials = metadata_values(lon, lat, day, "tutorials")
    assert tutorials[4:] == pytest.approx(values[6:] + values[4:6])


def test_unknown_sensor_names_the_known_ones():
    assert parse_sensors("sentinel-2-l2a, landsat-c2l2-sr,sentinel-2-l2a") == ("sentinel-2-l2a", "landsat-c2l2-sr")
    with pytest.raises(SensorError, match="unknown sensor 'sentinel-3'.*sentinel-2-l2a"):
        parse_sensors("sentinel-2-l2a,sentinel-3")


def test_official_code_loads_without_torchvision_or_timm_left_behind():
    import sys
    import types

    load_official()
    assert not any(isinstance(sys.modules.get(name), types.SimpleNamespace) for name in ("timm", "torchvision.transforms.v2"))
    assert "torchvision" not in sys.modules and "src" not in sys.modules
