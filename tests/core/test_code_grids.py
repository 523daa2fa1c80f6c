"""The code-grid format (core.code_grids): version 2 with one or two levels, written from tensors by the
format's writer and read back memory-mapped; version-1 folders; every refusal is one line naming the file."""

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from core.code_grids import (
    META_FILE,
    GridLevel,
    code_dtype,
    load_codes,
    one_level,
    read_meta,
)
from core.errors import VqgenError
from core.runs import sha256_file

sys.path.insert(0, str(Path(__file__).parent))
from code_grids_folder import ONE, TWO, write_grids  # noqa: E402


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    return write_grids(tmp_path_factory.mktemp("one") / "codes", ONE)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return write_grids(tmp_path_factory.mktemp("two") / "codes", TWO)


def read_all(folder: Path, split: str, names: list[str]) -> dict[str, torch.Tensor]:
    grids = load_codes(folder, split)
    items = [grids[i] for i in range(len(grids))]
    assert all(sorted(item) == sorted([*names, "label"]) for item in items)
    return {name: torch.stack([item[name] for item in items]) for name in [*names, "label"]}


def test_one_level_reads_back_as_codes_and_label(one):
    folder, written = one
    meta = read_meta(folder)
    assert meta.format_version == 2 and meta.levels == list(ONE)
    assert (meta.codebook_size, meta.grid_h, meta.grid_w) == (16, 4, 4)  # what one-level readers use
    stored = json.loads((folder / META_FILE).read_text())
    assert stored["levels"] == [{"name": "codes", "grid_h": 4, "grid_w": 4, "codebook_size": 16}]
    for split, (codes, labels) in written.items():
        got = read_all(folder, split, ["codes"])
        assert got["codes"].dtype == torch.int64 and torch.equal(got["codes"], codes["codes"])
        assert torch.equal(got["label"], labels)
        assert list(datasets.load_from_disk(str(folder / split))["index"]) == list(range(len(labels)))


def test_two_levels_read_back_memory_mapped_each_in_its_dtype(two):
    folder, written = two
    meta = read_meta(folder)
    assert meta.levels == list(TWO) and (meta.codebook_size, meta.grid_h, meta.grid_w) == (None, None, None)
    features = datasets.load_from_disk(str(folder / "train")).features
    assert features["top"] == datasets.Array2D((2, 2), "uint16")
    assert features["bottom"] == datasets.Array2D((4, 4), "uint32")  # K = 70000 > 65535
    for split, (codes, labels) in written.items():
        got = read_all(folder, split, ["top", "bottom"])
        assert torch.equal(got["top"], codes["top"]) and torch.equal(got["bottom"], codes["bottom"])
        assert int(got["bottom"].max()) == 69999 and torch.equal(got["label"], labels)
    files = load_codes(folder, "train").table.cache_files
    assert files, "loaded into memory instead of memory-mapped"
    assert all(Path(f["filename"]).parent == (folder / "train").resolve() for f in files)


@pytest.mark.parametrize("levels", ["one", "two"])
def test_batched_fetch_equals_single_items(levels, request):
    grids = load_codes(request.getfixturevalue(levels)[0], "train")
    batch = grids.__getitems__([3, 0, 9])
    for item, i in zip(batch, [3, 0, 9]):
        assert item.keys() == grids[i].keys() and all(torch.equal(item[k], grids[i][k]) for k in item)
    first = next(iter(torch.utils.data.DataLoader(grids, batch_size=4)))
    assert {name: tuple(first[name].shape) for name in grids.names} == {
        lv.name: (4, lv.grid_h, lv.grid_w) for lv in grids.meta.levels}


def test_a_version_1_folder_reads_as_one_level_named_codes(tmp_path):
    """The layout vqgen wrote before version 2: one `codes` column, no `levels`."""
    codes = np.random.default_rng(0).integers(0, 16, (5, 4, 4)).astype(np.uint16)
    features = datasets.Features({"codes": datasets.Array2D((4, 4), "uint16"), "label": datasets.Value("int64"),
                                  "index": datasets.Value("int64")})
    datasets.Dataset.from_dict({"codes": list(codes), "label": [1] * 5, "index": list(range(5))},
                               features=features).save_to_disk(str(tmp_path / "train"))
    (tmp_path / META_FILE).write_text(json.dumps({
        "format_version": 1, "codebook_size": 16, "grid_h": 4, "grid_w": 4, "image_size": 16, "channels": 1,
        "num_classes": 2, "data_spec": "synthetic", "splits": {"train": 5}, "tokenizer_sha256": "0" * 64,
        "tokenizer_path": "none", "vqgen_version": "0.1.0"}))
    meta = read_meta(tmp_path)
    assert meta.format_version == 1 and meta.levels == [GridLevel("codes", 4, 4, 16)]
    assert meta.data == {} and meta.skipped == {}
    assert torch.equal(read_all(tmp_path, "train", ["codes"])["codes"], torch.from_numpy(codes.astype(np.int64)))


@pytest.mark.parametrize("k, dtype", [(2, "uint16"), (65535, "uint16"), (65536, "uint32"), (70000, "uint32")])
def test_code_dtype_rule(k, dtype):
    assert code_dtype(k) == dtype


def level(name: str, h: int, w: int, k: int) -> dict:
    return {"name": name, "grid_h": h, "grid_w": w, "codebook_size": k}


ONE_BAD = [
    ({"format_version": 3}, "format_version=3 but this vqgen reads 1 and 2; re-run `vqgen dump-codes`"),
    ({"codebook_size": 70000, "levels": [level("codes", 4, 4, 70000)]},
     "level codes's codebook_size=70000 cannot be held by the stored uint16"),
    ({"grid_h": 2}, r"codebook_size/grid_h/grid_w are \(16, 2, 4\) but levels lists codes 4x4"),
    ({"grid_h": 2, "levels": [level("codes", 2, 4, 16)]}, r"level codes's grid_h/grid_w \(2x4\) do not match"),
    ({"levels": [level("top", 4, 4, 16)]}, "levels are named top, but a code-grid folder holds one level named codes"),
    ({"levels": {"codes": 4}}, "levels must be a list of"),
    ({"levels": [level("codes", 4, 0, 16)]}, "must be positive integers"),
    ({"splits": {"train": 11, "val": 6}}, "splits.train=11 but train/ holds 10 rows"),
]
TWO_BAD = [
    ({"levels": [level("top", 3, 2, 512), level("bottom", 4, 4, 70000)]},
     "the top grid 3x2 does not divide the bottom grid 4x4"),
    ({"levels": [level("top", 2, 2, 512), level("bottom", 8, 4, 70000)]},
     r"level bottom's grid_h/grid_w \(8x4\) do not match the stored codes"),
    ({"levels": [level("codes", 4, 4, 16)], "codebook_size": 16, "grid_h": 4, "grid_w": 4},
     "levels lists codes 4x4 .* but train/ holds the grid column.s. bottom, top"),
    ({"levels": [level("bottom", 4, 4, 70000), level("top", 2, 2, 512)]}, "levels are named bottom, top"),
    ({"codebook_size": 512}, "must repeat a single level, and be null for two"),
]


@pytest.mark.parametrize("folder, changes, message", [("one", *case) for case in ONE_BAD]
                         + [("two", *case) for case in TWO_BAD])
def test_inconsistent_metadata_is_one_line_naming_the_file(tmp_path, request, folder, changes, message):
    bad = write_grids(tmp_path / "bad", {"one": ONE, "two": TWO}[folder], meta_changes=changes)[0]
    with pytest.raises(VqgenError, match=message) as err:
        load_codes(bad, "train")
    assert str(err.value).startswith(f"{bad / META_FILE}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("drop, levels", [("levels", TWO), ("grid_w", ONE), ("tokenizer_sha256", ONE)])
def test_missing_fields_are_named(tmp_path, drop, levels):
    folder = write_grids(tmp_path / "codes", levels)[0]
    meta = json.loads((folder / META_FILE).read_text())
    del meta[drop]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VqgenError, match=f"{META_FILE}: field '{drop}' is missing"):
        read_meta(folder)


def test_missing_folder_split_and_file_are_one_line(one, tmp_path):
    with pytest.raises(VqgenError, match="nowhere: code-grid folder not found; run `vqgen dump-codes`"):
        load_codes(tmp_path / "nowhere", "train")
    with pytest.raises(VqgenError, match=r"split 'test' not found \(has train, val\)"):
        load_codes(one[0], "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VqgenError, match=META_FILE):
        read_meta(tmp_path / "empty")


def test_a_reader_of_one_level_refuses_two_naming_the_file_and_levels(one, two):
    assert one_level(read_meta(one[0]), one[0], "-") == ONE[0]
    with pytest.raises(VqgenError) as err:
        one_level(read_meta(two[0]), two[0], "this reader takes one level; dump one-level codes")
    assert str(err.value) == (f"{two[0] / META_FILE}: holds 2 levels (top 2x2 (K=512), bottom 4x4 (K=70000)), "
                              "but this reader takes one level; dump one-level codes")


def test_tokenizer_hash_given_or_at_tokenizer_path_must_match(tmp_path):
    weights = tmp_path / "tok" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    digest = sha256_file(weights)
    folder = write_grids(tmp_path / "codes", ONE, meta_changes={"tokenizer_path": str(weights.parent),
                                                         "tokenizer_sha256": digest})[0]
    assert len(load_codes(folder, "train")) == 10  # the same weights: accepted
    weights.write_bytes(b"retrained")  # retrained in place after the dump
    with pytest.raises(VqgenError) as err:
        load_codes(folder, "train")
    assert str(err.value).startswith(f"{folder / META_FILE}: tokenizer_sha256 does not match {weights}")
    assert "dump the codes again" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(VqgenError, match=rf"{META_FILE}: tokenizer_sha256 {digest[:12]}... does not match the "
                                         r"tokenizer in use \(ffffffffffff...\)"):
        load_codes(folder, "train", expect_tokenizer_sha256="f" * 64)
    assert len(load_codes(folder, "train", expect_tokenizer_sha256=digest)) == 10  # the given hash, not the file
    weights.parent.rename(tmp_path / "moved")  # nothing left to compare with: read without a check
    assert len(load_codes(folder, "val")) == 6
