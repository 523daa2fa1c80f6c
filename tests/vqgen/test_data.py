import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data import DataConfig, deterministic_split, load_images, to_model_range
from vqgen.errors import VqgenError


def _write_images(root, n, size=(20, 12), mode="RGB", classes=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / (classes[i % len(classes)] if classes else "")
        folder.mkdir(parents=True, exist_ok=True)
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i:03d}.png")


def test_fashion_mnist_splits(fmnist_available):
    cfg = DataConfig(max_images=0)
    train, val, test = (load_images(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (57000, 3000, 10000)
    item = train[5]
    assert item["image"].shape == (1, 32, 32) and item["image"].min() >= -1 and item["image"].max() <= 1
    assert train.num_classes == 10 and 0 <= item["label"] < 10
    # 28x28 padded to 32: the 2-pixel border is background.
    assert torch.all(item["image"][:, :2] == -1) and torch.all(item["image"][:, :, -2:] == -1)


def test_split_is_deterministic_and_disjoint():
    cfg = DataConfig(val_fraction=0.1, split_seed=3)
    train, val = deterministic_split(100, cfg, "train"), deterministic_split(100, cfg, "val")
    assert len(val) == 10 and set(train).isdisjoint(val) and len(train) + len(val) == 100
    assert np.array_equal(val, deterministic_split(100, cfg, "val"))


def test_folder_with_classes_crop_and_resize(tmp_path):
    _write_images(tmp_path, 12, classes=["cat", "dog"])
    ds = load_images(DataConfig(spec=f"folder:{tmp_path}", image_size=8, val_fraction=0.25), "train")
    assert len(ds) == 9 and ds.num_classes == 2 and ds.channels == 3
    assert ds[0]["image"].shape == (3, 8, 8) and ds[0]["label"] in (0, 1)
    gray = load_images(DataConfig(spec=f"folder:{tmp_path}", image_size=8, channels=1), "val")
    assert gray[0]["image"].shape == (1, 8, 8)


def test_folder_without_classes_has_no_labels(tmp_path):
    _write_images(tmp_path, 5, mode="L")
    ds = load_images(DataConfig(spec=f"folder:{tmp_path}", image_size=16), "train")
    assert ds.num_classes == 0 and ds[0]["label"] == -1 and ds.channels == 1


def test_bad_image_is_named_or_skipped(tmp_path):
    _write_images(tmp_path, 6)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cfg = DataConfig(spec=f"folder:{tmp_path}", image_size=8, val_fraction=0.01)
    ds = load_images(cfg, "train")
    with pytest.raises(VqgenError, match="broken.png"):
        [ds[i] for i in range(len(ds))]
    skipping = load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), "train")
    assert len(skipping) == len(ds) - 1


@pytest.mark.parametrize(
    "spec,match", [("imagenet", "unknown"), ("folder:/nonexistent", "not a directory")]
)
def test_bad_specs(spec, match):
    with pytest.raises(VqgenError, match=match):
        load_images(DataConfig(spec=spec), "train")


def test_empty_folder(tmp_path):
    with pytest.raises(VqgenError, match="no images"):
        load_images(DataConfig(spec=f"folder:{tmp_path}"), "train")


def test_hf_dataset_on_disk(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((10, 10), i * 20, np.uint8)) for i in range(10)]
    ds = datasets.Dataset.from_dict({"image": images, "label": list(range(10))}).cast_column("image", datasets.Image())
    ds.save_to_disk(tmp_path / "hf")
    train = load_images(DataConfig(spec=f"hf:{tmp_path / 'hf'}", image_size=8, val_fraction=0.2), "train")
    val = load_images(DataConfig(spec=f"hf:{tmp_path / 'hf'}", image_size=8, val_fraction=0.2), "val")
    assert len(train) == 8 and len(val) == 2 and train.num_classes == 10
    assert train[0]["image"].shape == (1, 8, 8)


def test_to_model_range_converts_channels():
    pixels = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    assert torch.all(to_model_range(pixels, 4, 3, pad=False) == 1.0)
    rgb = torch.zeros((3, 4, 4), dtype=torch.uint8)
    assert to_model_range(rgb, 4, 1, pad=False).shape == (1, 4, 4)
