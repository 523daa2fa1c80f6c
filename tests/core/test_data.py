import gzip
import io
import struct
import zlib

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from core.data import DataConfig, deterministic_split, load_images, to_model_range
from core.errors import VqgenError


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
    with pytest.raises(VqgenError, match="broken.png.*skip_bad"):  # when the split is loaded, before any work
        load_images(cfg, "train")
    skipping = load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), "train")
    assert len(skipping) == len(deterministic_split(7, cfg, "train")) - 1 and skipping.skipped == 1
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



def _refusals_per_split(cfg: DataConfig) -> list[str]:
    """The one-line refusals that loading train and val gives, in that order."""
    errors = []
    for split in ("train", "val"):
        try:
            load_images(cfg, split)
        except VqgenError as err:
            errors.append(str(err))
    return errors


def test_hf_corrupt_image_names_the_row_or_is_skipped(hf_with_a_corrupt_row):
    cfg = DataConfig(spec=f"hf:{hf_with_a_corrupt_row}", image_size=8, val_fraction=0.2)
    errors = _refusals_per_split(cfg)
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


# Image modes. Each case: a writer of a 2x2 image at `path`, and the pixels it must load as, in
# [0, 1] (H, W, C); image_size=2 keeps them unresized.
def _grey16(path):
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], np.uint16)).save(path)  # mode I;16


def _grey16_big_endian(path):
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], ">u2")).save(path)  # mode I;16B


def _int32(path):
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], np.int32)).save(path)  # mode I


def _float32(path):
    Image.fromarray(np.array([[0, 1], [0.5, 1000 / 65535]], np.float32)).save(path)  # mode F


def _grey16_transparent(path):
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], np.uint16)).save(path, transparency=0)


WIDE = np.array([[0, 1], [32768 / 65535, 1000 / 65535]])[..., None]


def _bilevel(path):
    Image.fromarray(np.array([[False, True], [True, False]])).save(path)  # mode 1


def _palette_with_transparency(path):
    im = Image.new("P", (2, 2), 1)
    im.putpalette([255, 0, 0, 0, 0, 255])  # 0: red, transparent below; 1: blue
    im.putpixel((0, 0), 0)
    im.save(path, transparency=0)


def _grey_palette(path):
    im = Image.new("P", (2, 2), 1)
    im.putpalette([0, 0, 0, 128, 128, 128])  # greys only: one channel
    im.putpixel((0, 0), 0)
    im.save(path)


def _grey_alpha(path):
    Image.fromarray(np.array([[[100, 0], [100, 255]], [[100, 51], [0, 255]]], np.uint8), "LA").save(path)


def _transparent_red(path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[0, 1, 3] = 255, 255  # red everywhere; only (0, 1) is opaque
    Image.fromarray(rgba).save(path)


def _cmyk(path):
    Image.new("CMYK", (2, 2), (255, 0, 0, 0)).save(path)  # cyan ink


def _ycbcr(path):
    Image.new("YCbCr", (2, 2), (100, 128, 128)).save(path)  # a grey level, in a colour mode


GREY_ALPHA = (np.array([[255, 100], [0.2 * 100 + 0.8 * 255, 0]]) / 255)[..., None]  # over white at a=0, 1, 0.2, 1


@pytest.mark.parametrize(
    "name,writer,expected",
    [
        ("a.png", _grey16, WIDE),
        ("a.tif", _grey16_big_endian, WIDE),
        ("a.tif", _int32, WIDE),
        ("a.tif", _float32, WIDE),
        ("a.png", _grey16_transparent, np.array([[1, 1], [32768 / 65535, 1000 / 65535]])[..., None]),
        ("a.png", _bilevel, np.array([[0, 1], [1, 0]])[..., None]),
        ("a.gif", _palette_with_transparency, np.array([[[1, 1, 1], [0, 0, 1]], [[0, 0, 1], [0, 0, 1]]])),
        ("a.png", _grey_palette, np.array([[0, 128], [128, 128]])[..., None] / 255),
        ("a.png", _grey_alpha, GREY_ALPHA),
        ("a.png", _transparent_red, np.array([[[1, 1, 1], [1, 0, 0]], [[1, 1, 1], [1, 1, 1]]])),
        ("a.tif", _cmyk, np.broadcast_to([0, 1, 1], (2, 2, 3))),
        pytest.param("a.tif", _ycbcr, np.full((2, 2, 3), 100 / 255), marks=pytest.mark.skipif(
            int(PIL.__version__.split(".")[0]) < 13, reason="Pillow < 13 reads no uncompressed YCbCr TIFF (gradio, in "
            "the serve extra, pins pillow < 13)")),
    ],
)
def test_each_image_mode_loads_its_true_pixels(tmp_path, name, writer, expected):
    writer(tmp_path / name)
    image = load_images(DataConfig(spec=f"folder:{tmp_path}", image_size=2), "train")[0]["image"]
    channels = image.shape[0]
    assert channels == expected.shape[-1]  # grey modes load as one channel, colour as three
    loaded = ((image + 1) / 2).permute(1, 2, 0).numpy()
    assert loaded == pytest.approx(expected, abs=1.5 / 255)


def _train_only(root):
    """A DataConfig whose train split is every image under root/train (root/val is left empty)."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
    return DataConfig(spec=f"folder:{root}", image_size=2)


def test_wide_pixels_out_of_range_are_refused_not_clipped(tmp_path):
    _write_images(tmp_path / "train", 2, size=(2, 2), mode="L")
    Image.fromarray(np.array([[0, 2.0], [0.5, 1]], np.float32)).save(tmp_path / "train" / "hdr.tif")
    cfg = _train_only(tmp_path)
    with pytest.raises(VqgenError, match=r"hdr.tif: .*outside 0\.\.1.*skip_bad"):
        load_images(cfg, "train")
    assert load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), "train").skipped == 1


def test_conversions_are_logged_once_per_split(tmp_path, caplog):
    cfg = _train_only(tmp_path)
    _grey16(tmp_path / "train" / "a.png")
    _transparent_red(tmp_path / "train" / "b.png")
    with caplog.at_level("INFO", logger="core.data"):
        load_images(cfg, "train")
    [line] = [r.getMessage() for r in caplog.records if "of 2 images" in r.getMessage()]
    assert "1 had transparency, composited on white" in line and "1 were 16-bit or float" in line
    assert "1 were grey, replicated to 3 channels" in line


@pytest.mark.parametrize("colour_first", [True, False])
def test_grey_and_colour_mixed_load_as_colour_whatever_the_order(tmp_path, colour_first):
    cfg = _train_only(tmp_path)
    grey, colour = ("b.png", "a.png") if colour_first else ("a.png", "b.png")
    Image.fromarray(np.full((2, 2), 60, np.uint8)).save(tmp_path / "train" / grey)
    Image.fromarray(np.full((2, 2, 3), (255, 0, 0), np.uint8)).save(tmp_path / "train" / colour)
    ds = load_images(cfg, "train")
    images = {ds.source.paths[i].name: ds[i]["image"] for i in range(len(ds))}
    assert ds.channels == 3 and images[colour][:, 0, 0].tolist() == [1, -1, -1]
    assert images[grey][:, 0, 0] == pytest.approx([60 / 127.5 - 1] * 3)  # grey replicated
    as_grey = load_images(DataConfig(**{**cfg.__dict__, "channels": 1}), "train")
    red_luma = {p.name: as_grey[i]["image"][0, 0, 0] for i, p in enumerate(as_grey.source.paths)}[colour]
    assert as_grey.channels == 1 and red_luma == pytest.approx(76 / 127.5 - 1)  # ITU-R 601: 0.299 * 255


def test_channels_agree_across_split_folders(tmp_path):
    # train/ is all grey, val/ holds one colour image: both splits must have 3 channels.
    _write_images(tmp_path / "train", 3, size=(2, 2), mode="L")
    _write_images(tmp_path / "val", 1, size=(2, 2), mode="L")
    _write_images(tmp_path / "val", 1, size=(2, 2), mode="RGB")  # overwrites val/000.png in colour
    cfg = DataConfig(spec=f"folder:{tmp_path}", image_size=2)
    train, val = load_images(cfg, "train"), load_images(cfg, "val")
    assert train.channels == val.channels == 3 and train[0]["image"].shape == val[0]["image"].shape == (3, 2, 2)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit grey) over a few bytes of data: PIL refuses it
    at open as a decompression bomb, without allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_huge_image_is_named_or_skipped(tmp_path):
    _write_images(tmp_path, 4, size=(4, 4))
    (tmp_path / "huge.png").write_bytes(_png_claiming(20_000, 20_000))
    cfg = DataConfig(spec=f"folder:{tmp_path}", image_size=4, val_fraction=0.01)
    with pytest.raises(VqgenError) as err:
        load_images(cfg, "train")
    message = str(err.value)
    assert "huge.png" in message and "Resize it below" in message and "skip_bad" in message and "\n" not in message
    skipping = load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), "train")
    assert skipping.skipped == 1 and all(skipping[i]["image"].shape == (3, 4, 4) for i in range(len(skipping)))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.array([[0, 40], [120, 160]], np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phone cameras write it
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif.tobytes())
    image = load_images(DataConfig(spec=f"folder:{tmp_path}", image_size=2), "train")[0]["image"]
    assert ((image[0] + 1) * 127.5).round().numpy() == pytest.approx(np.rot90(pixels, k=-1))


def _png_bytes(writer, tmp_path) -> bytes:
    writer(tmp_path / "cell.png")
    return (tmp_path / "cell.png").read_bytes()


def test_hf_images_convert_like_files(tmp_path):
    import datasets

    cells = [_png_bytes(_grey16, tmp_path), _png_bytes(_transparent_red, tmp_path), _png(60), _png_claiming(20_000, 20_000)]
    features = datasets.Features({"image": datasets.Image()})
    data = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in cells]}, features=features)
    data.save_to_disk(tmp_path / "hf")
    cfg = DataConfig(spec=f"hf:{tmp_path / 'hf'}", image_size=2, val_fraction=0.25)
    errors = _refusals_per_split(cfg)
    assert len(errors) == 1 and "row 3: " in errors[0] and "Resize it" in errors[0]
    splits = [load_images(DataConfig(**{**cfg.__dict__, "skip_bad": True}), s) for s in ("train", "val")]
    assert sum(ds.skipped for ds in splits) == 1 and {ds.channels for ds in splits} == {3}
    by_row = {int(ds.source.rows[i]): (ds[i]["image"] + 1) / 2 for ds in splits for i in range(len(ds))}
    assert sorted(by_row) == [0, 1, 2]
    assert by_row[0][:, 0, 1].tolist() == [1, 1, 1]  # 65535: 1, not clipped to 255 and so 1 by accident
    assert by_row[0][0, 1, 1] == pytest.approx(1000 / 65535, abs=1e-6)  # and 1000 is not 255
    assert by_row[1][:, 0, 0].tolist() == [1, 1, 1]  # transparent red is white
    assert by_row[2][:, 0, 0] == pytest.approx([60 / 255] * 3)  # grey replicated


def _rows(ds) -> list[torch.Tensor]:
    return [ds[i]["image"] for i in range(len(ds))]


def test_a_source_with_one_split_serves_test_with_the_val_cut(tmp_path):
    # Folder without split folders and hf with only a train split: train and val are cut by the
    # seeded split, and test is that same val cut, for both readers alike.
    import datasets

    _write_images(tmp_path / "flat", 10, size=(4, 4))
    images = [Image.fromarray(np.full((4, 4), 20 * i, np.uint8)) for i in range(10)]
    datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image()).save_to_disk(tmp_path / "hf")
    for spec in (f"folder:{tmp_path / 'flat'}", f"hf:{tmp_path / 'hf'}"):
        cfg = DataConfig(spec=spec, image_size=4, val_fraction=0.3, split_seed=1)
        train, val, test = (load_images(cfg, s) for s in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == (7, 3, 3)
        assert all(torch.equal(a, b) for a, b in zip(_rows(val), _rows(test), strict=True))
        assert not any(torch.equal(a, b) for a in _rows(train) for b in _rows(val))
