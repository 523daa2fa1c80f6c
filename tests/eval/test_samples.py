"""The cheap pass over a samples folder: every refusal names the file (or the count) before any
network is loaded. Where a test goes through `eval.fid.fid`, the Inception weights it names do not
exist, so an error about the samples proves that the samples were checked first."""

import numpy as np
import pytest
from PIL import Image

from core.errors import VqgenError
from eval.fid import fid, folder_batches
from eval.samples import ImageFormat, SampleFolder, check_reference_format


@pytest.fixture
def no_weights(tmp_path):
    """A weight file that is not there: loading the network would fail with its own error."""
    return tmp_path / "absent" / "pt_inception-2015-12-05-00000000.pth"


@pytest.fixture
def ref_npz(tmp_path):
    np.savez(tmp_path / "pf.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return tmp_path / "pf.npz"


def score(samples, ref, weights, n=0):
    return fid(samples, ref, n=n, weights=weights)


def test_sizes_mixed_across_batches_are_refused_naming_the_first_odd_file(tmp_path, pngs, ref_npz, no_weights):
    folder = pngs(tmp_path / "s", 50, 16)  # one full batch of 50 at 16 px
    Image.new("L", (20, 20)).save(folder / "zz_odd.png")  # the 51st image, alone in the next batch
    with pytest.raises(VqgenError, match=r"zz_odd.png: is 20x20 grey, 000.png and the images before it are 16x16 grey"):
        score(folder, ref_npz, no_weights)


def test_grey_among_colour_is_refused(tmp_path, pngs, ref_npz, no_weights):
    folder = pngs(tmp_path / "s", 3, 16, channels=3)
    Image.new("L", (16, 16)).save(folder / "010.png")
    with pytest.raises(VqgenError, match=r"010.png: is 16x16 grey, 000.png and the images before it are 16x16 RGB"):
        score(folder, ref_npz, no_weights)


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "not an image", "empty"])
def test_a_broken_png_is_named_before_the_network_loads(tmp_path, pngs, ref_npz, no_weights, damage):
    folder = pngs(tmp_path / "s", 3, 16)
    good = (folder / "000.png").read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    broken = {"truncated": good[: len(good) // 2], "bit flip": bytes(flipped), "not an image": b"hello", "empty": b""}
    (folder / "001.png").write_bytes(broken[damage])
    with pytest.raises(VqgenError, match=r"001.png: cannot read this image"):
        score(folder, ref_npz, no_weights)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16"])
def test_alpha_and_16_bit_samples_are_refused_not_clipped(tmp_path, pngs, mode):
    folder = pngs(tmp_path / "s", 2, 16)
    Image.new(mode, (16, 16)).save(folder / "002.png")
    with pytest.raises(VqgenError, match=rf"002.png: PIL mode {mode}.*8-bit L or RGB"):
        list(folder_batches(folder))


def test_too_few_samples_are_refused_with_the_count(tmp_path, pngs, ref_npz, no_weights):
    one = pngs(tmp_path / "one", 1, 16)
    with pytest.raises(VqgenError, match=r"one: 1 image found; FID needs at least 2"):
        score(one, ref_npz, no_weights)
    three = pngs(tmp_path / "three", 3, 16)
    for n, message in ((1, "1 samples asked for"), (-2, "-2 samples asked for"), (4, "three: 4 images asked for, 3 there")):
        with pytest.raises(VqgenError, match=message):
            score(three, ref_npz, no_weights, n=n)


def test_samples_that_are_not_a_folder_are_refused(tmp_path, ref_npz, no_weights):
    (tmp_path / "one.png").write_bytes(b"x")
    for path, message in ((tmp_path / "one.png", "not a folder"), (tmp_path / "absent", "not found")):
        with pytest.raises(VqgenError, match=rf"{path.name}: {message}; pass the folder of PNG samples"):
            score(path, ref_npz, no_weights)


@pytest.mark.parametrize("content", ["empty", "no images"])
def test_a_folder_without_images_is_refused(tmp_path, ref_npz, no_weights, content):
    folder = tmp_path / "s"
    folder.mkdir()
    if content == "no images":
        (folder / "codes.npz").write_bytes(b"x")
        (folder / "notes.txt").write_text("x")
        (folder / "dir.png").mkdir()  # a folder named like an image is not one
    with pytest.raises(VqgenError, match="no images found"):
        score(folder, ref_npz, no_weights)


def test_hidden_temporary_copies_are_not_samples(tmp_path, pngs):
    folder = pngs(tmp_path / "s", 2, 16)
    # What a `vqgen sample` killed while writing 000.png leaves behind (core.runs.atomic_path).
    leftover = folder / ".000.png.k2j4.tmp"
    leftover.mkdir()
    (leftover / "000.png").write_bytes((folder / "000.png").read_bytes()[:40])
    batches = list(folder_batches(folder))
    assert sum(len(b) for b in batches) == 2


def test_items_keep_the_folder_format(tmp_path, pngs):
    grey = SampleFolder(pngs(tmp_path / "grey", 3, 12))
    rgb = SampleFolder(pngs(tmp_path / "rgb", 3, 12, channels=3))
    assert grey.format == ImageFormat(12, 12, 1) and rgb.format == ImageFormat(12, 12, 3)
    (batch,) = grey.batches(8)
    assert batch.shape == (3, 1, 12, 12) and batch.dtype.is_floating_point is False
    expected = np.asarray(Image.open(tmp_path / "grey" / "001.png"))
    assert np.array_equal(batch[1, 0].numpy(), expected)


def test_reference_format_must_match(tmp_path):
    fmt = ImageFormat(32, 32, 1)
    check_reference_format(fmt, 32, 1, "ref.npz", "fix")
    check_reference_format(fmt, 0, 0, "ref.npz", "fix")  # unknown: a third-party reference
    with pytest.raises(VqgenError, match="ref.npz: reference images are 64x64 grey, the samples 32x32 grey; fix"):
        check_reference_format(fmt, 64, 1, "ref.npz", "fix")
    with pytest.raises(VqgenError, match="reference images are 32x32 RGB, the samples 32x32 grey"):
        check_reference_format(fmt, 32, 3, "ref.npz", "fix")
