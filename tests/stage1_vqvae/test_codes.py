import json
import subprocess
from pathlib import Path

import datasets
import pytest
import torch

from stage1_vqvae.codes import (
    META_FILE,
    code_dtype,
    decode,
    dump_codes,
    load_codes,
    read_meta,
    tokenizer_sha256,
)
from stage1_vqvae.model import VQVAE, VQVAEConfig, load_tokenizer
from vqgen.data import DataConfig, load_images
from vqgen.errors import VqgenError

DATA = DataConfig(image_size=16, max_images=37)  # 37: batches of 8 leave a remainder


def make_tokenizer(folder: Path, codebook_size: int = 16) -> Path:
    torch.manual_seed(0)
    cfg = VQVAEConfig(base_channels=8, channel_mult=(1, 2), code_dim=4, codebook_size=codebook_size, image_size=16,
                      kmeans_init=codebook_size < 1000)
    model = VQVAE(cfg)
    model(torch.rand(8, 1, 16, 16) * 2 - 1)  # one training forward: k-means init of the codebook
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, fmnist_available):
    root = tmp_path_factory.mktemp("codes")
    tokenizer = make_tokenizer(root / "tokenizer")
    return tokenizer, dump_codes(tokenizer, DATA, root / "codes", batch_size=8)


def test_round_trip_equals_encoding_the_images(dumped):
    tokenizer_dir, codes_dir = dumped
    tokenizer = load_tokenizer(tokenizer_dir)
    for split in ("train", "val"):
        images = load_images(DATA, split)
        grids = load_codes(codes_dir, split)
        assert len(grids) == len(images) == 37
        expected = tokenizer.encode(torch.stack([images[i]["image"] for i in range(len(images))]))
        got = torch.stack([grids[i]["codes"] for i in range(len(grids))])
        assert got.dtype == torch.int64 and torch.equal(got, expected)
        assert [int(grids[i]["label"]) for i in range(5)] == [int(images[i]["label"]) for i in range(5)]
        assert list(datasets.load_from_disk(str(codes_dir / split))["index"]) == list(range(37))


def test_batched_fetch_equals_single_items(dumped):
    grids = load_codes(dumped[1], "train")
    batch = grids.__getitems__([3, 0, 36])
    for item, i in zip(batch, [3, 0, 36]):
        assert torch.equal(item["codes"], grids[i]["codes"]) and item["label"] == grids[i]["label"]
    loader = torch.utils.data.DataLoader(grids, batch_size=8)
    first = next(iter(loader))
    assert first["codes"].shape == (8, 8, 8) and first["label"].shape == (8,)


def test_metadata_fields(dumped):
    tokenizer_dir, codes_dir = dumped
    meta = read_meta(codes_dir)
    assert (meta.format_version, meta.codebook_size, meta.grid_h, meta.grid_w) == (1, 16, 8, 8)
    assert (meta.image_size, meta.channels, meta.num_classes) == (16, 1, 10)
    assert meta.data_spec == "fashion-mnist" and meta.splits == {"train": 37, "val": 37}
    assert meta.tokenizer_sha256 == tokenizer_sha256(tokenizer_dir)
    assert Path(meta.tokenizer_path) == tokenizer_dir.resolve()
    assert load_codes(codes_dir, "val").meta == meta
    stored = datasets.load_from_disk(str(codes_dir / "train")).features
    assert stored["codes"] == datasets.Array2D((8, 8), "uint16")
    assert not list(codes_dir.parent.glob(".codes*"))  # no staging or temporary folders left behind


@pytest.mark.parametrize("k, dtype", [(2, "uint16"), (65535, "uint16"), (65536, "uint32"), (70000, "uint32")])
def test_code_dtype_rule(k, dtype):
    assert code_dtype(k) == dtype


def test_a_large_codebook_is_stored_as_uint32(tmp_path, fmnist_available):
    tokenizer = make_tokenizer(tmp_path / "tok", codebook_size=70000)
    codes_dir = dump_codes(tokenizer, DataConfig(image_size=16, max_images=4), tmp_path / "codes", splits=("val",))
    assert datasets.load_from_disk(str(codes_dir / "val")).features["codes"].dtype == "uint32"
    assert torch.equal(load_codes(codes_dir, "val")[0]["codes"], load_tokenizer(tokenizer).encode(
        load_images(DataConfig(image_size=16, max_images=4), "val")[0]["image"][None])[0])


def test_tokenizer_hash_mismatch_names_file_field_and_fix(dumped):
    with pytest.raises(VqgenError, match=rf"{META_FILE}: tokenizer_sha256 .* re-run `vqgen dump-codes`"):
        load_codes(dumped[1], "train", expect_tokenizer_sha256="f" * 64)
    load_codes(dumped[1], "train", expect_tokenizer_sha256=tokenizer_sha256(dumped[0]))


def copy_with_meta(codes_dir: Path, dest: Path, **changes) -> Path:
    import shutil

    shutil.copytree(codes_dir, dest)
    meta = json.loads((dest / META_FILE).read_text())
    (dest / META_FILE).write_text(json.dumps({**meta, **changes}))
    return dest


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"codebook_size": 70000}, "codebook_size=70000 cannot be held by the stored uint16"),
        ({"grid_h": 4}, "grid_h/grid_w"),
        ({"splits": {"train": 40, "val": 37}}, "splits.train=40"),
        ({"format_version": 2}, "format_version=2"),
    ],
)
def test_inconsistent_metadata_is_refused(dumped, tmp_path, changes, message):
    bad = copy_with_meta(dumped[1], tmp_path / "bad", **changes)
    with pytest.raises(VqgenError, match=message):
        load_codes(bad, "train")


def test_missing_pieces_are_user_errors(dumped, tmp_path):
    with pytest.raises(VqgenError, match="dump-codes"):
        load_codes(tmp_path / "nowhere", "train")
    bad = copy_with_meta(dumped[1], tmp_path / "bad")
    with pytest.raises(VqgenError, match="split 'test' not found"):
        load_codes(bad, "test")
    meta = json.loads((bad / META_FILE).read_text())
    del meta["grid_w"]
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VqgenError, match="field 'grid_w' is missing"):
        read_meta(bad)
    (bad / META_FILE).unlink()
    with pytest.raises(VqgenError, match=META_FILE):
        read_meta(bad)


def test_decode_equals_decode_codes(dumped):
    tokenizer = load_tokenizer(dumped[0])
    codes = torch.stack([item["codes"] for item in load_codes(dumped[1], "val").__getitems__(list(range(10)))])
    images = decode(codes, tokenizer, batch_size=16)
    assert images.shape == (10, 1, 16, 16)
    assert torch.equal(images, tokenizer.decode_codes(codes))
    # Other batch sizes pick other conv kernels on CPU: equal up to float rounding.
    assert torch.allclose(decode(codes, tokenizer, batch_size=3), images, atol=1e-5)


def test_data_that_does_not_fit_the_tokenizer_is_refused(dumped, tmp_path):
    with pytest.raises(VqgenError, match="3-channel"):
        dump_codes(dumped[0], DataConfig(image_size=16, max_images=4, channels=3), tmp_path / "c")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_dump_equals_one_process_dump(dumped, tmp_path, cpu_launch):
    script = Path(__file__).parent / "dump_codes_script.py"
    done = subprocess.run([*cpu_launch(2), str(script), str(dumped[0]), str(tmp_path / "codes")],
                          cwd=Path(__file__).parents[2], timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("processes=2") == 2, done.stdout[-500:]
    assert read_meta(tmp_path / "codes") == read_meta(dumped[1])
    for split in ("train", "val"):
        one = datasets.load_from_disk(str(dumped[1] / split))
        two = datasets.load_from_disk(str(tmp_path / "codes" / split))
        assert two.to_dict() == one.to_dict()  # same rows, same order: no duplicates, no gaps
