import gzip
import io

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
    assert len(skipping) == len(ds) - 1 and skipping.skipped == 1 and ds.skipped == 0
    assert all(skipping[i]["image"].shape == (3, 8, 8) for i in range(len(skipping)))


def test_split_folders_share_one_class_list(tmp_path):
    # val/ lacks "ant": its labels must still be train's (bee=1, cat=2), and N the same.
    _write_images(tmp_path / "train", 6, classes=["ant", "bee", "cat"])
    _write_images(tmp_path / "val", 4, classes=["bee", "cat"])
    cfg = DataConfig(spec=f"folder:{tmp_path}", image_size=8)
    train, val = load_images(cfg, "train"), load_images(cfg, "val")
    assert train.num_classes == val.num_classes == 3
    assert [int(train[i]["label"]) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [int(val[i]["label"]) for i in range(4)] == [1, 1, 2, 2]
    assert load_images(cfg, "test").num_classes == 3  # test falls back to val/


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


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 10), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def hf_with_a_corrupt_row(tmp_path):
    import datasets

    cells = [{"bytes": _png(20 * i), "path": None} for i in range(10)]
    cells[3] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": cells, "label": list(range(10))}, features=features).save_to_disk(tmp_path / "hf")
    return tmp_path / "hf"


def test_hf_corrupt_image_names_the_row_or_is_skipped(hf_with_a_corrupt_row):
    cfg = DataConfig(spec=f"hf:{hf_with_a_corrupt_row}", image_size=8, val_fraction=0.2)
    errors = []
    for split in ("train", "val"):
        ds = load_images(cfg, split)
        for i in range(len(ds)):
            try:
                ds[i]
            except VqgenError as err:
                errors.append(str(err))
    assert len(errors) == 1 and f"hf:{hf_with_a_corrupt_row} split 'train' row 3:" in errors[0]
    assert "skip_bad" in errors[0] and "\n" not in errors[0]
    skipping = [load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), s) for s in ("train", "val")]
    assert sum(len(ds) for ds in skipping) == 9 and sum(ds.skipped for ds in skipping) == 1
    labels = sorted(int(ds[i]["label"]) for ds in skipping for i in range(len(ds)))
    assert labels == [0, 1, 2, 4, 5, 6, 7, 8, 9] and skipping[0].num_classes == skipping[1].num_classes == 10


def _write_idx(path, array: np.ndarray) -> None:
    """An idx file as MNIST ships it: magic 0x0000 0x08 (uint8) ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_digit_set(folder, names: dict[str, str], suffix: str = "") -> dict[str, np.ndarray]:
    """Fake 28x28 sets: 20 train and 6 test images whose pixels equal 10 * their label."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"train": np.arange(20) % 10, "t10k": np.arange(6) % 10}
    for prefix, y in labels.items():
        _write_idx(folder / f"{prefix}-{names['images']}{suffix}", np.broadcast_to(10 * y[:, None, None], (len(y), 28, 28)))
        _write_idx(folder / f"{prefix}-{names['labels']}{suffix}", y)
    return labels


def _check_digit_set(cfg: DataConfig, labels: dict[str, np.ndarray]) -> None:
    train, val, test = (load_images(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 5, 6) and train.num_classes == 10
    for ds in (train, val, test):
        item = ds[0]
        assert item["image"].shape == (1, 32, 32) and torch.all(item["image"][:, :2] == -1)  # padded
        assert item["image"][0, 16, 16] == pytest.approx(10 * int(item["label"]) / 127.5 - 1)
    assert sorted(int(test[i]["label"]) for i in range(6)) == sorted(labels["t10k"].tolist())


IDX = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}


def test_mnist_from_a_local_root(tmp_path):
    labels = _write_digit_set(tmp_path / "MNIST" / "raw", IDX)  # torchvision's own layout
    _check_digit_set(DataConfig(spec=f"mnist:{tmp_path}", val_fraction=0.25), labels)


def test_fashion_mnist_from_fmnist_dir_gzipped(tmp_path, monkeypatch):
    labels = _write_digit_set(tmp_path, IDX, suffix=".gz")  # Debian ships the idx files gzipped
    monkeypatch.setenv("FMNIST_DIR", str(tmp_path))
    _check_digit_set(DataConfig(val_fraction=0.25), labels)


def test_fashion_mnist_from_a_dir_spec(tmp_path):
    labels = _write_digit_set(tmp_path, IDX)
    _check_digit_set(DataConfig(spec=f"fashion-mnist:{tmp_path}", val_fraction=0.25), labels)


def test_to_model_range_converts_channels():
    pixels = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    assert torch.all(to_model_range(pixels, 4, 3, pad=False) == 1.0)
    rgb = torch.zeros((3, 4, 4), dtype=torch.uint8)
    assert to_model_range(rgb, 4, 1, pad=False).shape == (1, 4, 4)
