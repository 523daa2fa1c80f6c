import pytest
import torch

from core.pixels import to_uint8

VALUES = [-2.0, -1.0, -0.999, 0.0, 0.5, 0.996, 1.0, 3.0]


def test_model_range_maps_onto_the_256_levels():
    # -1 -> 0 and 1 -> 255; values outside [-1, 1] are clamped; 0 is 127.5, rounded half to even.
    got = to_uint8(torch.tensor(VALUES).reshape(1, 1, 2, 4))
    assert got.dtype == torch.uint8 and got.shape == (1, 1, 2, 4) and got.device.type == "cpu"
    assert got.flatten().tolist() == [0, 0, 0, 128, 191, 254, 255, 255]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_types_give_the_float32_levels(dtype):
    x = torch.linspace(-1, 1, 511, dtype=dtype).reshape(1, 1, 1, -1)
    assert torch.equal(to_uint8(x), to_uint8(x.float()))


def test_every_level_survives_the_way_in_and_back():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(levels.float() / 127.5 - 1.0), levels)  # the data layer's way in
