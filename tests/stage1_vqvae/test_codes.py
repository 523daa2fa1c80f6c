import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import core
from core.code_grids import META_FILE, GridLevel, load_codes, read_meta
from core.config import to_dict
from core.data import DataConfig, load_images
from core.errors import VqgenError
from stage1_vqvae.codes import decode, dump_codes, tokenizer_sha256
from stage1_vqvae.load import load_tokenizer
from tests.tiny_generator import save_tokenizer

DATA = DataConfig(image_size=16, max_images=37)  # 37: batches of 8 leave a remainder
HOLD = Path(__file__).parents[1] / "core" / "hold_output.py"  # holds an output's lock, as a writer does


def make_tokenizer(folder: Path, codebook_size: int = 16, seed: int = 0, **model) -> Path:
    """16x16 images to 8x8 grids, warmed by one training forward (k-means init of a small codebook)."""
    return save_tokenizer(folder, image_size=16, warm=True, seed=seed, code_dim=4,
                          quantizer={"codebook_size": codebook_size, "kmeans_init": codebook_size < 1000}, **model)


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


def test_metadata_fields(dumped):
    tokenizer_dir, codes_dir = dumped
    meta = read_meta(codes_dir)
    assert (meta.format_version, meta.codebook_size, meta.grid_h, meta.grid_w) == (2, 16, 8, 8)
    assert meta.levels == [GridLevel("codes", 8, 8, 16)]
    assert (meta.image_size, meta.channels, meta.num_classes) == (16, 1, 10)
    assert meta.data_spec == "fashion-mnist" and meta.splits == {"train": 37, "val": 37}
    assert meta.tokenizer_sha256 == tokenizer_sha256(tokenizer_dir)
    assert Path(meta.tokenizer_path) == tokenizer_dir.resolve()
    assert meta.vqgen_version == core.__version__
    assert meta.data == to_dict(DATA) and meta.skipped == {"train": 0, "val": 0}
    assert load_codes(codes_dir, "val").meta == meta
    stored = datasets.load_from_disk(str(codes_dir / "train")).features
    assert stored["codes"] == datasets.Array2D((8, 8), "uint16")
    assert not list(codes_dir.parent.glob(".codes*"))  # no staging or temporary folders left behind


def test_metadata_maps_index_back_to_the_source_image(dumped):
    tokenizer = load_tokenizer(dumped[0])
    meta, table = read_meta(dumped[1]), datasets.load_from_disk(str(dumped[1] / "val"))
    images = load_images(DataConfig(**meta.data), "val")
    row = table[20]
    assert torch.equal(tokenizer.encode(images[row["index"]]["image"][None])[0], torch.as_tensor(row["codes"]).long())


def _write_gray_folder(root: Path, n: int) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(root / f"{i:02d}.png")
    (root / "broken.png").write_bytes(b"not a png")


def test_unlabelled_dump_with_skipped_images(dumped, tmp_path):
    _write_gray_folder(tmp_path / "images", 11)
    data = DataConfig(spec=f"folder:{tmp_path / 'images'}", image_size=16, val_fraction=0.25, skip_bad=True)
    codes_dir = dump_codes(dumped[0], data, tmp_path / "codes", batch_size=4)
    meta = read_meta(codes_dir)
    assert meta.num_classes == 0 and sum(meta.splits.values()) == 11
    assert meta.skipped == {s: load_images(data, s).skipped for s in ("train", "val")}
    assert sum(meta.skipped.values()) == 1 and meta.data["skip_bad"] is True
    for split in ("train", "val"):
        labels = [int(item["label"]) for item in load_codes(codes_dir, split)]
        assert labels and set(labels) == {-1}


def test_a_large_codebook_is_stored_as_uint32(tmp_path, fmnist_available):
    tokenizer = make_tokenizer(tmp_path / "tok", codebook_size=70000)
    codes_dir = dump_codes(tokenizer, DataConfig(image_size=16, max_images=4), tmp_path / "codes", splits=("val",))
    assert datasets.load_from_disk(str(codes_dir / "val")).features["codes"].dtype == "uint32"
    assert torch.equal(load_codes(codes_dir, "val")[0]["codes"], load_tokenizer(tokenizer).encode(
        load_images(DataConfig(image_size=16, max_images=4), "val")[0]["image"][None])[0])


def test_a_two_level_tokenizer_writes_top_and_bottom_columns(tmp_path, fmnist_available):
    tokenizer = make_tokenizer(tmp_path / "tok", levels=2, top_quantizer={"codebook_size": 8})
    data = DataConfig(image_size=16, max_images=6)
    codes_dir = dump_codes(tokenizer, data, tmp_path / "codes", batch_size=4)
    meta = read_meta(codes_dir)
    assert meta.levels == [GridLevel("top", 4, 4, 8), GridLevel("bottom", 8, 8, 16)]
    assert (meta.format_version, meta.codebook_size, meta.grid_h, meta.grid_w) == (2, None, None, None)
    images = load_images(data, "val")
    expected = load_tokenizer(tokenizer).encode_levels(torch.stack([images[i]["image"] for i in range(len(images))]))
    grids = load_codes(codes_dir, "val")
    items = grids.__getitems__(list(range(len(grids))))
    assert all(sorted(item) == ["bottom", "label", "top"] for item in items)
    for name in ("top", "bottom"):
        assert torch.equal(torch.stack([item[name] for item in items]), expected[name])


def test_decode_equals_decode_codes(dumped):
    tokenizer = load_tokenizer(dumped[0])
    codes = torch.stack([item["codes"] for item in load_codes(dumped[1], "val").__getitems__(list(range(10)))])
    images = decode(codes, tokenizer, batch_size=16)
    assert images.shape == (10, 1, 16, 16)
    assert torch.equal(images, tokenizer.decode_codes(codes))
    # Other batch sizes pick other conv kernels on CPU: equal up to float rounding.
    assert torch.allclose(decode(codes, tokenizer, batch_size=3), images, atol=1e-5)


@pytest.mark.parametrize(
    "changes, field", [({"channels": 3}, "channels"), ({"image_size": 32}, "image_size"), ({"image_size": 8}, "image_size")]
)
def test_data_that_does_not_fit_the_tokenizer_is_refused(dumped, tmp_path, changes, field):
    # Another image size would still encode, into grids of another shape than the tokenizer's own.
    trained = {"channels": 1, "image_size": 16}[field]
    with pytest.raises(VqgenError, match=rf"config.json: the tokenizer was trained on {field}={trained} .* "
                                         rf"set data.{field}={trained}"):
        dump_codes(dumped[0], DataConfig(**{"image_size": 16, "max_images": 4, **changes}), tmp_path / "c")
    assert not (tmp_path / "c").exists()


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


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("what", ["user folder", "tokenizer run", "file"])
def test_dump_codes_never_replaces_what_it_did_not_write(dumped, tmp_path, what):
    out = tmp_path / "d"
    if what == "file":
        out.write_text("x")
    elif what == "user folder":  # mkdir d; echo x > d/NOTES
        out.mkdir()
        (out / "NOTES").write_text("x")
    else:  # --out <the tokenizer's run folder>
        shutil.copytree(dumped[0], out / "model")
        (out / "run_config.json").write_text("{}")
    before = tree(tmp_path)
    with pytest.raises(VqgenError, match=rf"{out}: (holds|is a file).*choose another --out"):
        dump_codes(dumped[0], DataConfig(image_size=16, max_images=4), out)
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_dump_codes_replaces_its_own_folder_whole(dumped, tmp_path):
    out = dump_codes(dumped[0], DataConfig(image_size=16, max_images=4), tmp_path / "codes")
    dump_codes(dumped[0], DataConfig(image_size=16, max_images=6), out, splits=("val",))
    assert read_meta(out).splits == {"val": 6} and sorted(p.name for p in out.iterdir()) == ["val", META_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes"]  # no lock, staging or old copy left


def test_a_second_dump_into_the_same_folder_is_refused(dumped, tmp_path):
    holder = subprocess.Popen([sys.executable, str(HOLD), str(tmp_path / "codes"), "codes"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # another dump-codes, in mid-run
    with pytest.raises(VqgenError, match=rf"another vqgen process \(pid {holder.pid}\) is writing it"):
        dump_codes(dumped[0], DataConfig(image_size=16, max_images=4), tmp_path / "codes")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".codes.lock"]  # its lock; nothing of ours
    holder.communicate("")


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "--batch-size 0"), ({"splits": ()}, "--splits")])
def test_a_bad_request_is_refused_before_anything_is_written(dumped, tmp_path, kwargs, message):
    with pytest.raises(VqgenError, match=message):
        dump_codes(dumped[0], DataConfig(image_size=16, max_images=4), tmp_path / "out" / "codes", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_during_a_dump_is_one_line_and_keeps_the_old_folder(dumped, tmp_path):
    old = shutil.copytree(dumped[1], tmp_path / "codes")
    before = tree(old)
    # A file-size limit makes every write past 16 kB fail with EFBIG, as a full disk fails with ENOSPC
    # (Python ignores SIGXFSZ); 300 grids of 8x8 uint16 codes need 38 kB.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))"
    command = f"{limit}; from vqgen.cli import main; raise SystemExit(main())"
    done = subprocess.run([sys.executable, "-c", command, "dump-codes", "--tokenizer", str(dumped[0]),
                           "--out", str(old), "--data.image_size=16", "--data.max_images=300", "--batch-size=64"],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors == [f"vqgen dump-codes: error: {old}: could not write (File too large); the folder is as it "
                      "was before this run (nothing half-written); free some space and run it again"]
    assert tree(old) == before and sorted(p.name for p in tmp_path.iterdir()) == ["codes"]
