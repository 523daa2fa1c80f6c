"""The `vqgen` command line: one entry point for every stage.

    vqgen train-tokenizer --config configs/fashion-mnist.yaml --out runs/t
    accelerate launch -m vqgen train-prior --codes runs/t/codes --out runs/p --train.steps=2000

Each subcommand takes a few named flags; any other `--section.key=value` overrides the config file,
which may be a whole pipeline YAML (the subcommand reads its own section and `data:`) or a file of
the stage's settings alone. This is the only module that parses arguments or writes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqgen import __version__
from vqgen.config import Rule, help_of, load_config, parse_overrides, rule_of
from vqgen.errors import VqgenError

COMMANDS: dict[str, str] = {
    "train-tokenizer": "train the VQ-VAE tokenizer (stage 1)",
    "dump-codes": "encode a data set into code grids with a trained tokenizer",
    "reconstruct": "reconstruct val images with a tokenizer: side-by-side PNG and metrics",
    "train-prior": "train the autoregressive prior on code grids (stage 2)",
    "sample": "draw images from a prior and decode them with the tokenizer",
    "fid-ref": "compute reference Inception statistics of a data set",
    "fid": "FID and KID of a folder of samples against reference statistics",
    "train-classifier": "train the small-data classifier used for classifier FID / IS",
    "pipeline": "tokenizer -> codes -> prior -> samples -> eval, resumable",
}

# What to do after Ctrl-C: training resumes from its last checkpoint, sampling and the pipeline
# from their finished parts; the rest write atomically, so a rerun simply starts over.
RESUME_HINT: dict[str, str] = {
    **{name: "run it again with --resume to continue from the last checkpoint"
       for name in ("train-tokenizer", "train-prior", "train-classifier")},
    "sample": "run the same command again: finished images are kept and skipped",
    "pipeline": "run the same command again: finished stages are skipped",
}

# Counts given as plain flags. An Inception covariance needs two images (one gives NaN); 0: all.
AT_LEAST_ONE = Rule(ge=1)
FID_COUNT = Rule(ge=2, choices=(0,))
# SampleConfig fields that are also `vqgen sample` flags (--top-k sets top_k).
SAMPLE_FLAGS = ("n", "temperature", "top_k", "top_p", "cfg_scale", "per_class", "batch_size", "seed")
# The sections of a pipeline YAML (vqgen.pipeline.PipelineConfig): a stage command given such a file
# reads its own section and `data:` (importing the pipeline here would import every stage).
PIPELINE_SECTIONS = ("data", "tokenizer", "prior", "sample", "eval")


def configure_runtime() -> None:
    """Process-wide settings, set once here and nowhere else (no library sets flags at import)."""
    logging.basicConfig(level=os.environ.get("VQGEN_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch
    import transformers

    # Saving our small models makes transformers list every unsharded layer; errors still show.
    transformers.logging.set_verbosity_error()

    # TF32 matmuls on Ampere and newer GPUs: a large speed-up at no visible cost in these models.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgen", description="Train a VQ tokenizer and an autoregressive prior; sample; measure FID.",
        epilog="Any other --section.key=value flag overrides a config setting.",
    )
    parser.add_argument("--version", action="version", version=f"vqgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}
    for name in ("train-tokenizer", "train-prior", "pipeline", "train-classifier"):
        p[name].add_argument("--config", type=Path, help="YAML settings (see configs/)")
    for name in ("train-tokenizer", "train-prior", "train-classifier"):
        p[name].add_argument("--resume", action="store_true", help="continue the run in --out")
    for name in ("train-tokenizer", "dump-codes", "reconstruct", "fid-ref", "train-classifier"):
        p[name].add_argument("--data", help="data spec: fashion-mnist, mnist, cifar10, folder:PATH, hf:NAME")
        p[name].add_argument("--skip-bad", action="store_true", help="skip unreadable images (and count them)")
    for name in COMMANDS:
        p[name].add_argument("--out", type=Path, required=name != "fid", help="output folder or file")
    for name in ("dump-codes", "reconstruct", "sample"):
        p[name].add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder (or its run)")
    p["dump-codes"].add_argument("--splits", default="train,val", help="comma-separated splits to encode")
    p["dump-codes"].add_argument("--batch-size", type=checked(int, AT_LEAST_ONE), default=256,
                                 help="images encoded at once")
    p["reconstruct"].add_argument("--n", type=checked(int, AT_LEAST_ONE), default=64,
                                  help="images in the side-by-side PNG")
    p["reconstruct"].add_argument("--rfid-n", type=checked(int, FID_COUNT), default=0,
                                  help="val images for rFID (0: --n)")
    p["train-prior"].add_argument("--codes", help="code-grid folder written by dump-codes")
    p["train-prior"].add_argument("--arch", choices=("gpt", "pixelcnn"))
    p["train-prior"].add_argument("--preset", help="model size preset (see README)")
    _sample_flags(p["sample"])
    p["fid-ref"].add_argument("--split", default="test")
    p["fid-ref"].add_argument("--n", type=checked(int, FID_COUNT), default=0,
                              help="reference images (0: the whole split)")
    p["fid"].add_argument("--samples", type=Path, required=True, help="folder of PNG samples")
    p["fid"].add_argument("--ref", required=True, help="reference .npz (ours or pytorch-fid's) or a data spec")
    p["fid"].add_argument("--n", type=checked(int, FID_COUNT), default=0, help="samples to score (0: all)")
    p["fid"].add_argument("--ref-n", type=checked(int, FID_COUNT), default=0,
                          help="test images of a --ref data spec (0: all)")
    for name in ("fid-ref", "fid", "reconstruct", "pipeline"):
        p[name].add_argument("--inception-weights", type=Path, help="pytorch-fid or torch-fidelity weights")
    return parser


def _sample_flags(p: argparse.ArgumentParser) -> None:
    from sampling.generate import SampleConfig

    p.add_argument("--prior", type=Path, required=True, help="prior folder (or its run)")
    p.add_argument("--classes", help="comma-separated class ids to draw from, e.g. 0,3,7")
    fields = {f.name: f for f in dataclasses.fields(SampleConfig)}
    hints = typing.get_type_hints(SampleConfig)
    for name in SAMPLE_FLAGS:
        kind = next(a for a in (*typing.get_args(hints[name]), hints[name]) if a in (int, float))
        p.add_argument("--" + name.replace("_", "-"), type=checked(kind, rule_of(fields[name])), help=help_of(fields[name]))


def checked(kind: type, rule: Rule) -> Callable[[str], Any]:
    """An argparse `type=`: the flag's text as `kind` (int or float), refused with a one-line usage
    error before any work unless it keeps `rule`."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        problem = rule.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


def run(args: argparse.Namespace, overrides: list[str]) -> str:
    """Run one subcommand; return the line to print."""
    handler = globals()["_cmd_" + args.command.replace("-", "_")]
    return handler(args, overrides)


def _cmd_train_tokenizer(args, overrides):
    from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer

    cfg = _stage_config(TokenizerRunConfig, "tokenizer", args, overrides, _data_flags(args))
    return f"tokenizer: {train_tokenizer(cfg, args.out, resume=args.resume)}"


def _stage_config(cls: type, section: str, args, overrides: list[str], flags: dict[str, Any]):
    """Defaults, then --config (its `section` and data: if a pipeline YAML, else the whole file),
    then the named flags, then --key=value overrides."""
    return load_config(cls, args.config, overrides, section=section, pipeline_keys=PIPELINE_SECTIONS, flags=flags)


def _cmd_dump_codes(args, overrides):
    from stage1_vqvae.codes import dump_codes

    data = _data_config(args, overrides, tokenizer=args.tokenizer)
    splits = tuple(s for s in args.splits.split(",") if s)
    return f"codes: {dump_codes(args.tokenizer, data, args.out, splits=splits, batch_size=args.batch_size)}"


def _cmd_reconstruct(args, overrides):
    from eval.recon import reconstruct

    data = _data_config(args, overrides, tokenizer=args.tokenizer)
    metrics = reconstruct(args.tokenizer, data, args.out, n=args.n, weights=args.inception_weights,
                          rfid_n=args.rfid_n)
    return "reconstruct: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _data_config(args, overrides, tokenizer: Path | None = None):
    """Data settings from the flags, on top of the tokenizer's own training data when there is one
    (an image size or channel count other than the tokenizer's would only be refused later)."""
    from stage1_vqvae.load import TRAINING_FILE, tokenizer_folder, training_data
    from vqgen.data import DataConfig

    trained = tokenizer is not None and (tokenizer_folder(tokenizer) / TRAINING_FILE).is_file()
    base = training_data(tokenizer) if trained else DataConfig()
    # A holder of `data` alone, so that any other --section.key is refused as unknown.
    holder = dataclasses.make_dataclass("DataSettings", [("data", DataConfig)])
    return load_config(holder, None, overrides, flags=_data_flags(args), base=holder(base)).data


def _data_flags(args) -> dict[str, Any]:
    return {"data.spec": args.data, "data.skip_bad": True if args.skip_bad else None}


def _cmd_train_prior(args, overrides):
    from stage2_prior.train import PriorRunConfig, train_prior

    flags = {"codes": args.codes, "arch": args.arch, "preset": args.preset}
    cfg = _stage_config(PriorRunConfig, "prior", args, overrides, flags)
    if not cfg.codes:
        raise VqgenError("train-prior: no code grids given; pass --codes DIR (written by vqgen dump-codes)")
    return f"prior: {train_prior(cfg, args.out, resume=args.resume)}"


def _cmd_sample(args, overrides):
    from sampling.decode import sample
    from sampling.generate import SampleConfig

    flags = {name: getattr(args, name) for name in SAMPLE_FLAGS}
    flags["classes"] = _class_ids(args.classes) if args.classes else None
    cfg = load_config(SampleConfig, None, overrides, flags=flags)
    return f"samples: {sample(args.prior, args.tokenizer, cfg, args.out)}"


def _class_ids(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise VqgenError(f"--classes '{text}': not a comma-separated list of class ids; write e.g. 0,3,7") from None


def _cmd_fid_ref(args, overrides):
    from eval.fid import fid_ref

    data = _data_config(args, overrides)
    stats = fid_ref(data, args.split, args.out, weights=args.inception_weights, n=args.n)
    return f"reference statistics of {stats.meta.get('n', '?')} images: {args.out}"


def _cmd_fid(args, overrides):
    from eval.fid import fid
    from eval.report import claim_report, write_report

    # --data.* settings describe a --ref data spec; the samples' own size and channels fill the rest.
    values = parse_overrides(overrides)
    if set(values) - {"data"}:
        raise VqgenError(f"vqgen fid: --{sorted(set(values) - {'data'})[0]}.* is not a fid setting; only --data.* "
                         "(for a --ref data spec) is")
    data = values.get("data", {})
    if args.out is not None:
        claim_report(args.out)  # checked and locked (until exit) before the Inception work, not after it
    result = fid(args.samples, args.ref, n=args.n, weights=args.inception_weights, n_ref=args.ref_n, data=data)
    scores = {k: v for k, v in result.items() if k in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "kid", "is", "n_samples")}
    line = "  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scores.items())
    if args.out is not None:
        try:
            write_report(args.out, result, title=f"vqgen fid: {args.samples}")  # X.json + X.md, or DIR/
        except VqgenError:
            _echo(line)  # the score is printed whatever happens to the file, then the error line
            raise
    return line


def _cmd_train_classifier(args, overrides):
    from eval.classifier import ClassifierRunConfig, train_classifier

    cfg = _stage_config(ClassifierRunConfig, "eval.classifier", args, overrides, _data_flags(args))
    return f"classifier: {train_classifier(cfg, args.out, resume=args.resume)}"


def _cmd_pipeline(args, overrides):
    from vqgen.pipeline import pipeline_config, run_pipeline

    cfg = pipeline_config(args.config, overrides)
    report = run_pipeline(cfg, args.out, inception_weights=args.inception_weights, echo=_echo)
    return f"report: {report}"


def _echo(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)} (settings are written --section.key=value)")
    configure_runtime()
    started = time.time()
    try:
        line = run(args, rest)
    except VqgenError as err:
        _close_progress_bars()
        print(f"vqgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"vqgen {args.command}: interrupted; {RESUME_HINT.get(args.command, 'run it again')}", file=sys.stderr)
        return 130
    if _is_main_process():
        print(f"{line}  ({time.time() - started:.1f} s)")
    return 0


def _close_progress_bars() -> None:
    """End a bar an error interrupted, so the error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"
