import pytest
import torch

from core.errors import VqgenError
from stage1_vqvae.discriminator import PatchDiscriminator, check_patch_grid, patch_grid


# pix2pix's 70x70 PatchGAN judges a 30x30 grid of a 256 px image; Fashion-MNIST's 28 px leave one patch.
@pytest.mark.parametrize("size, grid", [(28, 1), (32, 2), (64, 6), (256, 30)])
@pytest.mark.parametrize("channels", [1, 3])
def test_one_logit_per_patch_for_grey_and_colour_images(size, grid, channels):
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(channels, channels=8)
    logits = discriminator(torch.rand(2, channels, size, size) * 2 - 1)
    assert logits.shape == (2, 1, grid, grid) and patch_grid(size, 3) == grid
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_depth_and_width_are_configurable(layers):
    discriminator = PatchDiscriminator(3, channels=16, layers=layers)
    logits, maps = discriminator(torch.zeros(1, 3, 64, 64), features=True)
    assert len(maps) == layers + 1 and logits.shape[-1] == patch_grid(64, layers)
    assert [m.shape[1] for m in maps] == [16 * min(2**n, 8) for n in range(layers + 1)]


def test_an_images_logits_do_not_depend_on_its_batch():
    """GroupNorm, not BatchNorm: the same logits alone, in a batch, or in a batch split over processes."""
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(1, channels=8).train()
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    together = discriminator(images)
    for i in range(4):
        torch.testing.assert_close(discriminator(images[i : i + 1]), together[i : i + 1])


def test_too_deep_for_the_image_is_one_line():
    check_patch_grid(28, 3, "tokenizer.loss.adversarial.discriminator_layers")
    with pytest.raises(VqgenError, match=r"discriminator_layers=4 .*image_size=28 .* use at most 3$") as refused:
        check_patch_grid(28, 4, "tokenizer.loss.adversarial.discriminator_layers")
    assert "\n" not in str(refused.value)
