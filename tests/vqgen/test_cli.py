"""Every `vqgen` subcommand through the command line, on a tiny labelled image folder."""

import json

import numpy as np
import pytest
from PIL import Image

from vqgen.cli import main

TINY_DATA = ["--data.image_size=16", "--data.val_fraction=0.25"]
TRAIN = ["--train.batch_size=8", "--train.warmup_steps=1", "--train.eval_every=3", "--train.save_every=3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 16x16 grey images: dark blobs and bright blobs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, level in (("dark", 60), ("bright", 190)):
        (root / name).mkdir()
        for i in range(16):
            pixels = np.clip(rng.normal(level, 30, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i:02d}.png")
    return root


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"vqgen {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_subcommand_end_to_end(tmp_path, folder, capsys):
    data = ["--data", f"folder:{folder}", *TINY_DATA]
    assert main(["train-tokenizer", *data, "--out", str(tmp_path / "tok"), "--preset=tiny", "--train.steps=3",
                 *TRAIN]) == 0
    assert (tmp_path / "tok" / "model" / "model.safetensors").is_file()

    # dump-codes and reconstruct read the tokenizer's own data settings: no --data needed.
    assert main(["dump-codes", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "codes")]) == 0
    meta = json.loads((tmp_path / "codes" / "vqgen_codes.json").read_text())
    assert meta["splits"] == {"train": 24, "val": 8} and (meta["grid_h"], meta["num_classes"]) == (8, 2)
    assert main(["dump-codes", "--tokenizer", str(tmp_path / "tok"), "--data.image_size=32",
                 "--out", str(tmp_path / "codes32")]) == 2
    assert "image_size" in one_error_line(capsys, "dump-codes")

    assert main(["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--n", "4", "--out", str(tmp_path / "recon")]) == 0
    assert (tmp_path / "recon" / "reconstructions.png").is_file()

    assert main(["train-prior", "--codes", str(tmp_path / "codes"), "--arch", "gpt", "--preset", "demo",
                 "--out", str(tmp_path / "prior"), "--train.steps=3", *TRAIN]) == 0
    assert (tmp_path / "prior" / "model" / "vqgen_prior.json").is_file()

    samples = tmp_path / "samples"
    assert main(["sample", "--prior", str(tmp_path / "prior"), "--tokenizer", str(tmp_path / "tok"),
                 "--classes", "1,0", "--per-class", "2", "--cfg-scale", "2", "--temperature", "0.9",
                 "--top-k", "5", "--top-p", "0.9", "--batch-size", "3", "--seed", "1", "--out", str(samples)]) == 0
    names = sorted(p.name for p in (samples / "images").glob("*.png"))
    assert names == ["000000_c1.png", "000001_c1.png", "000002_c0.png", "000003_c0.png"]
    assert (samples / "grid.png").is_file() and (samples / "codes.npz").is_file()
    settings = json.loads((samples / "sample_config.json").read_text())
    assert (settings["cfg_scale"], settings["top_k"], settings["top_p"], settings["seed"]) == (2.0, 5, 0.9, 1)

    ref = tmp_path / "ref.npz"
    assert main(["fid-ref", *data, "--split", "val", "--out", str(ref)]) == 0
    with np.load(ref) as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
    capsys.readouterr()
    assert main(["fid", "--samples", str(samples / "images"), "--ref", str(ref)]) == 0
    assert "fid: " in capsys.readouterr().out

    assert main(["train-classifier", *data, "--out", str(tmp_path / "clf"), "--widths=[8,16]",
                 "--feature_dim=16", "--train.steps=3", *TRAIN]) == 0
    assert (tmp_path / "clf" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "argv,command,fragment",
    [
        (["train-tokenizer", "--data", "nosuch", "--out", "{tmp}/t"], "train-tokenizer", "data spec 'nosuch' is unknown"),
        (["train-tokenizer", "--data", "folder:{tmp}/missing", "--out", "{tmp}/t"], "train-tokenizer", "not a directory"),
        (["train-prior", "--out", "{tmp}/p"], "train-prior", "pass --codes DIR"),
        (["train-prior", "--codes", "{tmp}/none", "--out", "{tmp}/p"], "train-prior", "{tmp}/none"),
        (["sample", "--prior", "{tmp}/p", "--tokenizer", "{tmp}/t", "--classes", "0,x", "--out", "{tmp}/s"],
         "sample", "--classes '0,x'"),
        (["train-tokenizer", "--out", "{tmp}/t", "--train.stepz=3"], "train-tokenizer", "unknown setting 'train.stepz'"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, capsys, argv, command, fragment):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert fragment.replace("{tmp}", str(tmp_path)) in one_error_line(capsys, command)


def test_skip_bad_flag_skips_an_unreadable_image(tmp_path, folder, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for png in sorted(folder.rglob("*.png"))[:12]:
        (data / png.name).write_bytes(png.read_bytes())
    (data / "broken.png").write_bytes(b"not a png")
    argv = ["train-tokenizer", "--data", f"folder:{data}", *TINY_DATA, "--preset=tiny", "--train.steps=1", *TRAIN]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "broken.png" in one_error_line(capsys, "train-tokenizer")
    assert main([*argv, "--skip-bad", "--out", str(tmp_path / "b")]) == 0
