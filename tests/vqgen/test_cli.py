"""Every `vqgen` subcommand through the command line, on a tiny labelled image folder."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.config import Copies, load_config
from vqgen.cli import COMMANDS, SETTINGS, command_config, main
from vqgen.pipeline import PipelineConfig

TINY_DATA = ["--data.image_size=16", "--data.val_fraction=0.25"]
TRAIN = ["--train.batch_size=8", "--train.warmup_steps=1", "--train.eval_every=3", "--train.save_every=3"]


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"vqgen {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# One pipeline YAML for every command: each reads its own section and data: from it.
RUN_YAML = """\
data: {image_size: 16, val_fraction: 0.25}
tokenizer:
  preset: tiny
  train: {steps: 3, batch_size: 8, warmup_steps: 1, eval_every: 3, save_every: 3}
prior:
  preset: demo
  train: {steps: 3, batch_size: 8, warmup_steps: 1, eval_every: 3, save_every: 3}
sample: {top_k: 5}
eval:
  classifier:
    widths: [8, 16]
    feature_dim: 16
    train: {steps: 3, batch_size: 8, warmup_steps: 1, eval_every: 3, save_every: 3}
"""


def test_every_subcommand_end_to_end(tmp_path, folder, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML)
    data = ["--config", str(config), "--data", f"folder:{folder}"]
    # 1e-3 is a string to YAML 1.1; it is a float here.
    assert main(["train-tokenizer", *data, "--out", str(tmp_path / "tok"), "--train.lr=1e-3"]) == 0
    assert json.loads((tmp_path / "tok" / "model" / "vqgen_tokenizer.json").read_text())["data"]["image_size"] == 16
    assert (tmp_path / "tok" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "tok" / "run_config.json").read_text())["preset"] == "tiny"

    # dump-codes and reconstruct read the tokenizer's own data settings: no --data needed.
    assert main(["dump-codes", "--config", str(config), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "codes")]) == 0
    meta = json.loads((tmp_path / "codes" / "vqgen_codes.json").read_text())
    assert meta["splits"] == {"train": 24, "val": 8} and (meta["grid_h"], meta["num_classes"]) == (8, 2)
    assert main(["dump-codes", "--config", str(config), "--tokenizer", str(tmp_path / "tok"), "--data.image_size=32",
                 "--out", str(tmp_path / "codes32")]) == 2
    assert "image_size" in one_error_line(capsys, "dump-codes")

    assert main(["reconstruct", "--config", str(config), "--tokenizer", str(tmp_path / "tok"), "--n", "4",
                 "--out", str(tmp_path / "recon")]) == 0
    assert (tmp_path / "recon" / "reconstructions.png").is_file()

    assert main(["train-prior", "--config", str(config), "--codes", str(tmp_path / "codes"), "--arch", "gpt",
                 "--out", str(tmp_path / "prior")]) == 0
    assert (tmp_path / "prior" / "model" / "vqgen_prior.json").is_file()
    assert json.loads((tmp_path / "prior" / "run_config.json").read_text())["preset"] == "demo"

    samples = tmp_path / "samples"
    assert main(["sample", "--config", str(config), "--prior", str(tmp_path / "prior"), "--tokenizer",
                 str(tmp_path / "tok"), "--classes", "1,0", "--per-class", "2", "--cfg-scale", "2", "--temperature",
                 "0.9", "--top-p", "0.9", "--batch-size", "3", "--seed", "1", "--out", str(samples)]) == 0
    names = sorted(p.name for p in (samples / "images").glob("*.png"))
    assert names == ["000000_c1.png", "000001_c1.png", "000002_c0.png", "000003_c0.png"]
    assert (samples / "grid.png").is_file() and (samples / "codes.npz").is_file()
    settings = json.loads((samples / "sample_config.json").read_text())
    assert (settings["cfg_scale"], settings["top_k"], settings["top_p"], settings["seed"]) == (2.0, 5, 0.9, 1)
    assert_full_disk_error_starts_a_line(tmp_path, ["sample", "--prior", str(tmp_path / "prior"), "--tokenizer",
                                                    str(tmp_path / "tok"), "--n", "8", "--batch-size", "8"])

    # The samples are 16 px: a reference at data:'s image_size 16 is the only one fid accepts.
    ref = tmp_path / "ref.npz"
    assert main(["fid-ref", *data, "--split", "val", "--out", str(ref)]) == 0
    with np.load(ref) as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
    capsys.readouterr()
    assert main(["fid", "--samples", str(samples / "images"), "--ref", str(ref)]) == 0
    assert "fid: " in capsys.readouterr().out

    assert main(["train-classifier", *data, "--out", str(tmp_path / "clf")]) == 0
    assert (tmp_path / "clf" / "model" / "model.safetensors").is_file()
    classifier = json.loads((tmp_path / "clf" / "run_config.json").read_text())
    assert (classifier["widths"], classifier["feature_dim"]) == ([8, 16], 16)


def assert_full_disk_error_starts_a_line(tmp_path, argv: list[str]) -> None:
    """A write that fails under a progress bar (every file past 3 kB, as on a full disk; Python ignores
    SIGXFSZ): the error line starts a line of its own, not the end of the bar's."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))"
    done = subprocess.run([sys.executable, "-c", f"{limit}; from vqgen.cli import main; raise SystemExit(main())",
                           *argv, "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"vqgen {argv[0]}: error: ") and "could not write" in errors[0], errors


def test_an_error_under_a_progress_bar_starts_a_line_of_its_own(tmp_path, folder, capsys):
    good, broken = tmp_path / "good", tmp_path / "broken"
    good.mkdir()
    for png in sorted(folder.rglob("*.png"))[::2]:
        (good / png.name.replace(".", f"_{png.parent.name}.")).write_bytes(png.read_bytes())
    broken.mkdir()
    for png in good.iterdir():
        (broken / png.name).write_bytes(png.read_bytes())
    whole = (good / "04_dark.png").read_bytes()
    (broken / "04_dark.png").write_bytes(whole[: len(whole) // 2])  # its header reads, its pixels do not
    argv = ["train-tokenizer", *TINY_DATA, "--preset=tiny", "--train.steps=3", *TRAIN]
    # The image fails inside the training loop, then inside the encoding loop of dump-codes.
    assert main([*argv, "--data", f"folder:{broken}", "--out", str(tmp_path / "a")]) == 2
    assert "04_dark.png: cannot read this image" in one_error_line(capsys, "train-tokenizer")
    assert main([*argv, "--data", f"folder:{good}", "--out", str(tmp_path / "tok")]) == 0
    assert main(["dump-codes", "--tokenizer", str(tmp_path / "tok"), "--data", f"folder:{broken}", "--batch-size", "2",
                 "--out", str(tmp_path / "codes")]) == 2
    assert "04_dark.png: cannot read this image" in one_error_line(capsys, "dump-codes")
    assert not (tmp_path / "codes").exists()


@pytest.mark.parametrize(
    "argv,command,fragment",
    [
        (["train-tokenizer", "--data", "nosuch", "--out", "{tmp}/t"], "train-tokenizer", "data spec 'nosuch' is unknown"),
        (["train-tokenizer", "--data", "folder:{tmp}/missing", "--out", "{tmp}/t"], "train-tokenizer", "not a directory"),
        (["train-prior", "--out", "{tmp}/p"], "train-prior", "pass --codes DIR"),
        (["train-prior", "--codes", "{tmp}/none", "--out", "{tmp}/p"], "train-prior", "{tmp}/none"),
        (["sample", "--prior", "{tmp}/p", "--tokenizer", "{tmp}/t", "--classes", "0,x", "--out", "{tmp}/s"],
         "sample", "--classes '0,x'"),
        (["train-tokenizer", "--out", "{tmp}/t", "--train.stepz=3"], "train-tokenizer",
         "command line: unknown setting '--train.stepz'"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, capsys, argv, command, fragment):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert fragment.replace("{tmp}", str(tmp_path)) in one_error_line(capsys, command)


def test_a_torn_arrow_file_of_codes_is_one_line(tmp_path, folder, capsys):
    """A code-grid folder whose Arrow file was cut short (a copy interrupted): datasets' ArrowInvalid was a traceback."""
    sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for tiny_generator
    from tiny_generator import save_tokenizer

    tokenizer = save_tokenizer(tmp_path / "tok", image_size=16)
    dump = ["dump-codes", "--tokenizer", str(tokenizer), "--data", f"folder:{folder}", *TINY_DATA, "--splits", "train"]
    assert main([*dump, "--out", str(tmp_path / "codes")]) == 0
    arrow = next((tmp_path / "codes" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    assert main(["train-prior", "--codes", str(tmp_path / "codes"), "--out", str(tmp_path / "p"), *TRAIN]) == 2
    assert f"{tmp_path / 'codes' / 'train'}: cannot read the code grids" in one_error_line(capsys, "train-prior")
    assert not (tmp_path / "p").exists()


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


def exit_code(argv: list[str]) -> int:
    """main's return value, or the status of argparse's exit on a bad flag."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


SAMPLE = ["sample", "--prior", "{tmp}/p", "--tokenizer", "{tmp}/t"]
FID = ["fid", "--samples", "{tmp}/s", "--ref", "{tmp}/ref.npz"]


@pytest.mark.parametrize(
    "argv,key",
    [
        *[(["train-tokenizer", f"--train.{k}={v}"], f"--train.{k}") for k, v in [
            ("batch_size", 0), ("grad_accum", 0), ("save_every", 0), ("eval_every", 0), ("log_every", 0),
            ("keep_checkpoints", 0), ("steps", 0), ("steps", -5), ("lr", ".nan"), ("lr", "-1e-3"), ("lr", ".inf"),
            ("betas", "[0.9]"), ("betas", "[0.9, 1.5]"), ("weight_decay", -0.1), ("grad_clip", -1),
            ("ema_decay", 1), ("mixed_precision", "fp8x"), ("seed", -1), ("warmup_steps", -1),
            ("min_lr_ratio", 2), ("num_workers", -1), ("eval_batches", -1)]],
        *[(["train-tokenizer", f"--data.{k}={v}"], f"--data.{k}") for k, v in [
            ("val_fraction", ".nan"), ("val_fraction", 1), ("val_fraction", 0), ("image_size", 0), ("channels", 2),
            ("resize", "zoom"), ("max_images", -1), ("split_seed", -1)]],
        (["train-tokenizer", "--recon_loss=l3"], "--recon_loss"),
        (["train-tokenizer", "--preset=huge"], "--preset"),
        (["train-prior", "--codes", "{tmp}/c", "--label_dropout=1"], "--label_dropout"),
        (["train-prior", "--codes", "{tmp}/c", "--family=gpt3"], "--family"),
        (["train-prior", "--codes", "{tmp}/c", "--train.lr=0"], "--train.lr"),
        (["train-classifier", "--feature_dim=0"], "--feature_dim"),
        (["train-classifier", "--widths=[]"], "--widths"),
        (["train-classifier", "--widths=[8, 0]"], "--widths"),
        (["dump-codes", "--tokenizer", "{tmp}/t", "--batch-size", "0"], "--batch-size"),
        (["fid-ref", "--data.val_fraction=2"], "--data.val_fraction"),
        (["fid-ref", "--train.steps=3"], "--train"),
        (["reconstruct", "--tokenizer", "{tmp}/t", "--n", "0"], "--n"),
        (["reconstruct", "--tokenizer", "{tmp}/t", "--rfid-n", "1"], "--rfid-n"),
        (["fid-ref", "--n", "1"], "--n"),
        (["fid-ref", "--n", "-3"], "--n"),
        ([*FID, "--n", "1"], "--n"),
        ([*FID, "--ref-n", "-1"], "--ref-n"),
        *[([*SAMPLE, flag, value], flag) for flag, value in [
            ("--n", "0"), ("--n", "1e3"), ("--temperature", "-1"), ("--temperature", "nan"), ("--top-k", "-1"),
            ("--top-p", "0"), ("--top-p", "1.5"), ("--cfg-scale", "inf"), ("--cfg-scale", "-1"),
            ("--per-class", "-1"), ("--batch-size", "0"), ("--seed", "-1")]],
        ([*SAMPLE, "--classes=-2,0"], "--classes"),
        ([*SAMPLE, "--kv_cache=paged"], "--kv_cache"),
        (["pipeline", "--eval.inception_n=2"], "--eval.inception_n"),
        (["pipeline", "--eval.rfid_n=1"], "--eval.rfid_n"),
        (["pipeline", "--eval.ref_split=dev"], "--eval.ref_split"),
        (["pipeline", "--sample.n=0"], "--sample.n"),
        (["pipeline", "--prior.train.lr=-1"], "--prior.train.lr"),
        (["pipeline", "--prior.train.stepz=3"], "--prior.train.stepz"),
    ],
)
def test_settings_out_of_range_are_one_line_before_any_work(tmp_path, capsys, argv, key):
    command = argv[0]
    out = tmp_path / "out"
    assert exit_code([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(out)]) == 2
    line = one_error_line(capsys, command)
    assert key in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    "command,yaml_text,flags,source,key",
    [
        ("train-tokenizer", "tokenizer:\n  train:\n    batch_size: 0\n", [], "{yaml}", "tokenizer.train.batch_size"),
        ("train-tokenizer", "train:\n  lr: .nan\n", [], "{yaml}", "train.lr"),  # a file of the stage's keys alone
        # A pipeline YAML: the command reads its own section and data:, and skips the others.
        ("train-tokenizer", "tokenizer:\n  preset: tiny\nprior:\n  train:\n    lr: .nan\ndata:\n  channels: 2\n", [],
         "{yaml}", "data.channels"),
        ("train-classifier", "sample:\n  n: 0\neval:\n  inception_n: 8\n  classifier:\n    feature_dim: 0\n", [],
         "{yaml}", "eval.classifier.feature_dim"),
        ("train-prior", "data:\n  spec: nosuch\ntokenizer:\n  preset: tiny\n", ["--train.steps=0"], "command line",
         "--train.steps"),
        ("train-prior", "prior:\n  train:\n    stepz: 3\n", [], "{yaml}", "prior.train.stepz"),
        ("train-prior", "prior:\n  train:\n    steps: 3\n", ["--train.stepz=3"], "command line", "--train.stepz"),
        ("pipeline", "eval:\n  inception_n: 2\n", [], "{yaml}", "eval.inception_n"),
        ("pipeline", "prior:\n  train:\n    steps: 3\n", ["--prior.train.stepz=3"], "command line",
         "--prior.train.stepz"),
        ("pipeline", "tokenizer:\n  data:\n    image_size: 8\n", [], "{yaml}", "tokenizer.data"),
        ("pipeline", "data:\n  image_size: 16\n", ["--tokenizer.data.image_size=8"], "command line",
         "--tokenizer.data"),
    ],
)
def test_errors_name_the_source_that_holds_the_key(tmp_path, capsys, command, yaml_text, flags, source, key):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    argv = [command, "--config", str(path), *flags, "--out", str(tmp_path / "out")]
    assert main(argv + (["--codes", str(tmp_path / "codes")] if command == "train-prior" else [])) == 2
    line = one_error_line(capsys, command)
    assert line.startswith(f"vqgen {command}: error: {source.replace('{yaml}', str(path))}: ") and key in line, line
    assert not (tmp_path / "out").exists()


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_command_reads_its_part_of_the_pipeline_yaml(path):
    pipeline = load_config(PipelineConfig, path)
    parts = {"train-tokenizer": pipeline.tokenizer, "train-prior": pipeline.prior, "sample": pipeline.sample,
             "train-classifier": pipeline.eval.classifier, "pipeline": pipeline}
    for command, part in parts.items():
        assert command_config(command, path) == part, command
    for command in ("dump-codes", "reconstruct", "fid-ref"):
        assert command_config(command, path).data == pipeline.data, command
    # fid's --data.* describe a --ref spec (see its --help); export and serve have no settings.
    assert set(SETTINGS) == set(COMMANDS) - {"fid", "export", "serve"}


def defaults(cfg, prefix=""):
    """(dotted key, default) of every setting in the config instance `cfg`."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from defaults(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, value


def help_text(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(SETTINGS))
def test_help_lists_every_setting_with_its_default(capsys, command):
    text = help_text(capsys, command)
    listed = {line.split("=")[0].strip(): line for line in text.splitlines() if line.startswith("  --")}
    cfg = SETTINGS[command].config()()
    copies = tuple(f"{key}." for key in getattr(cfg, "copies", Copies({}, "")).of)
    for key, value in defaults(cfg):
        if key.startswith(copies):  # the pipeline's stages read its one data: section
            assert f"--{key}" not in listed, key
            continue
        shown = re.search(r"\(default (.*?)(?:; or --[\w-]+)?\)", listed[f"--{key}"]).group(1)
        assert yaml.safe_load(shown) == (list(value) if isinstance(value, tuple) else value), key


def test_train_tokenizer_help_shows_sections_types_and_named_flags(capsys):
    text = " ".join(help_text(capsys, "train-tokenizer").split())  # as argparse wraps it at any width
    for words in ("--config FILE", "--preset=STR (default small)", "--train.steps=INT (default 600)",
                  "--data.spec=STR (default fashion-mnist; or --data)", "--data.skip_bad=BOOL (default false; or --skip-bad)",
                  "train settings:", "data settings:", "its tokenizer: section and data:"):
        assert words in text, words
    assert "two-stage image generation" in " ".join(main_help(capsys).split()).lower()


def main_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out


def test_under_accelerate_launch_each_line_is_printed_once(tmp_path, folder, cpu_launch):
    argv = [*cpu_launch(2), "-m", "vqgen", "train-tokenizer", "--data", f"folder:{folder}", *TINY_DATA, "--preset=tiny",
            "--train.steps=1", "--train.batch_size=8", "--train.warmup_steps=1"]
    bad = subprocess.run([*argv, "--train.stepz=3", "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("vqgen train-tokenizer: error: ") == 1, bad.stderr[-3000:]
    good = subprocess.run([*argv, "--out", str(tmp_path / "good")], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-3000:]
    assert good.stdout.count(f"tokenizer: {tmp_path / 'good' / 'model'}") == 1, good.stdout
