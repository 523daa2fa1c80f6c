"""The `vqgen` command line: one entry point for every stage.

    vqgen train-tokenizer --config configs/fashion-mnist.yaml --out runs/t
    accelerate launch -m vqgen train-prior --codes runs/t/codes --out runs/p --train.steps=2000

A command's settings are the fields of its config dataclass (`SETTINGS`). Its --help lists them
(key, type, default, help); --config gives a YAML file of them, which may be a whole pipeline YAML
(the command reads its own section and `data:`); `--section.key=value` sets one; a few also have a
named flag (`--data SPEC` sets data.spec). `core.config.load_config` merges them all, for every
command. This is the only module that parses arguments or writes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import math
import os
import shutil
import sys
import textwrap
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from core.config import Leaf, Rule, help_of, leaves, load_config, parse_overrides, rule_of
from core.errors import VqgenError
from vqgen import __version__

DESCRIPTION = ("Two-stage image generation. A VQ-VAE tokenizer turns images into grids of codes; a prior (a GPT, "
               "a PixelCNN or MaskGIT) learns to draw such grids, and the tokenizer decodes what it draws. FID, KID, rFID "
               "and classifier FID measure the result; `vqgen pipeline` runs every stage in one resumable folder.")

COMMANDS: dict[str, str] = {
    "train-tokenizer": "train the VQ-VAE tokenizer (stage 1)",
    "dump-codes": "encode a data set into code grids with a trained tokenizer",
    "reconstruct": "reconstruct val images with a tokenizer: side-by-side PNG and metrics",
    "train-prior": "train a prior (GPT, PixelCNN or MaskGIT) on code grids (stage 2)",
    "sample": "draw images from a prior and decode them with the tokenizer",
    "complete": "complete images: keep some of their codes (top rows or a mask), draw the rest with the prior",
    "fid-ref": "compute reference Inception statistics of a data set",
    "fid": "FID and KID of a folder of samples against reference statistics",
    "train-classifier": "train the small-data classifier used for classifier FID / IS",
    "pipeline": "tokenizer -> codes -> prior -> samples -> eval, resumable",
    "export": "a finished pipeline run as one folder (models, checksums, model card) to share or upload to the Hub",
    "serve": "a web demo of a trained generator on this machine (gradio): generate and complete images",
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
# The sections of a pipeline YAML (vqgen.pipeline.PipelineConfig): a stage command given such a file
# reads its own section and `data:` (importing the pipeline here would import every stage).
PIPELINE_SECTIONS = ("data", "tokenizer", "prior", "sample", "eval")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A command's settings: its config dataclass, imported only when needed (a stage imports torch:
    seconds), its section of a pipeline YAML (None: none of its own, though `data:` is still read),
    and its named flags, each of which sets one setting (argparse dest -> dotted key)."""

    config: Callable[[], type]
    section: str | None = None
    flags: dict[str, str] = dataclasses.field(default_factory=dict)


def _lazy(module: str, name: str) -> Callable[[], type]:
    return lambda: getattr(importlib.import_module(module), name)


@functools.cache
def data_settings() -> type:
    """The settings of a command that only reads data: `data` alone, so that any other key is refused."""
    from core.data import DataConfig

    return dataclasses.make_dataclass("DataSettings", [("data", DataConfig, dataclasses.field(default_factory=DataConfig))])


DATA_FLAGS = {"data": "data.spec", "skip_bad": "data.skip_bad"}
SWITCHES = {"skip_bad"}  # named flags that take no value
SAMPLE_FLAGS = ("n", "temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "cfg_interval", "per_class",
                "batch_size", "seed", "classes", "steps", "kv_cache")
GENERATOR_COMMANDS = ("sample", "complete")  # take --run WHERE, or --prior with --tokenizer
SETTINGS: dict[str, Settings] = {
    "train-tokenizer": Settings(_lazy("stage1_vqvae.train", "TokenizerRunConfig"), "tokenizer", DATA_FLAGS),
    "dump-codes": Settings(data_settings, None, DATA_FLAGS),
    "reconstruct": Settings(data_settings, None, DATA_FLAGS),
    "train-prior": Settings(_lazy("stage2_prior.train", "PriorRunConfig"), "prior",
                            {name: name for name in ("codes", "arch", "preset")}),
    "sample": Settings(_lazy("sampling.generate", "SampleConfig"), "sample", {name: name for name in SAMPLE_FLAGS}),
    "complete": Settings(_lazy("sampling.complete", "CompleteConfig"), "sample",
                         {name: name for name in SAMPLE_FLAGS if name != "per_class"}),
    "fid-ref": Settings(data_settings, None, DATA_FLAGS),
    "train-classifier": Settings(_lazy("eval.classifier", "ClassifierRunConfig"), "eval.classifier", DATA_FLAGS),
    "pipeline": Settings(_lazy("vqgen.pipeline", "PipelineConfig")),
}


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
        prog="vqgen", description=DESCRIPTION,
        epilog="Each command's --help lists its settings; set one with --section.key=value, or many in --config FILE.",
    )
    parser.add_argument("--version", action="version", version=f"vqgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    p = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}
    for name, settings in SETTINGS.items():
        p[name].settings = settings
        p[name].add_argument("--config", type=Path, metavar="FILE", help=_config_help(name, settings))
        for dest, key in settings.flags.items():
            _named_flag(p[name], settings, dest, key)
    for name in ("train-tokenizer", "train-prior", "train-classifier"):
        p[name].add_argument("--resume", action="store_true", help="continue the run in --out")
    for name in COMMANDS.keys() - {"serve"}:  # serve writes nothing
        p[name].add_argument("--out", type=Path, required=name != "fid", help="output folder or file")
    for name in ("dump-codes", "reconstruct", "sample", "complete"):
        p[name].add_argument("--tokenizer", type=Path, required=name not in GENERATOR_COMMANDS,
                             help="tokenizer folder (or its run)")
    p["dump-codes"].add_argument("--splits", default="train,val", help="comma-separated splits to encode")
    p["dump-codes"].add_argument("--batch-size", type=checked(int, AT_LEAST_ONE), default=256,
                                 help="images encoded at once")
    p["reconstruct"].add_argument("--n", type=checked(int, AT_LEAST_ONE), default=64,
                                  help="images in the side-by-side PNG")
    p["reconstruct"].add_argument("--rfid-n", type=checked(int, FID_COUNT), default=0,
                                  help="val images for rFID (0: --n)")
    for name in GENERATOR_COMMANDS:
        p[name].add_argument("--prior", type=Path, help="prior folder (or its run); with --tokenizer, or use --run")
        p[name].add_argument("--run", metavar="WHERE", help="a pipeline run, a bundle (vqgen export) or a Hub repo id: "
                             "its prior and tokenizer, instead of --prior and --tokenizer")
    _completion_arguments(p["complete"])
    p["export"].add_argument("--run", type=Path, required=True, help="a finished `vqgen pipeline` run folder")
    _serve_arguments(p["serve"])
    p["fid-ref"].add_argument("--split", default="test")
    p["fid-ref"].add_argument("--n", type=checked(int, FID_COUNT), default=0,
                              help="reference images (0: the whole split)")
    p["fid"].add_argument("--samples", type=Path, required=True, help="folder of PNG samples")
    p["fid"].add_argument("--ref", required=True, help="reference .npz (ours or pytorch-fid's) or a data spec")
    p["fid"].add_argument("--n", type=checked(int, FID_COUNT), default=0, help="samples to score (0: all)")
    p["fid"].add_argument("--ref-n", type=checked(int, FID_COUNT), default=0,
                          help="test images of a --ref data spec (0: all)")
    p["fid"].epilog = ("--data.KEY=VALUE settings (those of `vqgen fid-ref --help`) describe a --ref data spec; "
                       "the samples' own size and channels fill the rest.")
    for name in ("fid-ref", "fid", "reconstruct", "pipeline"):
        p[name].add_argument("--inception-weights", type=Path, help="pytorch-fid or torch-fidelity weights")
        p[name].add_argument("--no-cache", action="store_true",
                             help="compute data statistics again, without reading or filling $VQGEN_CACHE")
    return parser


def _completion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, action="append", required=True, metavar="FILE",
                   help="an image to complete (repeat for more); converted to the tokenizer's size and channels")
    keep = p.add_mutually_exclusive_group(required=True)
    keep.add_argument("--keep-rows", type=checked(int, Rule(ge=0)), metavar="R", help="keep the top R rows of codes")
    keep.add_argument("--keep-mask", type=Path, metavar="FILE",
                      help="PNG of the code grid's size (a pixel per code) or the image size: white keeps")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="WHERE", required=True,
                   help="a pipeline run, a bundle (vqgen export) or a Hub repo id: the generator to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=checked(int, Rule(ge=1, le=65535)), default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="also a public gradio.live link (off: reachable from --host only)")


def _config_help(name: str, settings: Settings) -> str:
    if name == "pipeline":
        return "YAML file of the settings below (see configs/)"
    parts = [f"{settings.section}: section" if settings.section else "", "data:" if "data" in settings.flags else ""]
    return f"YAML file of the settings below, or a pipeline YAML (its {' and '.join(filter(None, parts))})"


def _named_flag(p: argparse.ArgumentParser, settings: Settings, dest: str, key: str) -> None:
    """A named flag that sets setting `key`: listed in --help beside the setting (hence SUPPRESS here)."""
    flag = "--" + dest.replace("_", "-")
    if dest in SWITCHES:
        p.add_argument(flag, dest=dest, action="store_true", default=None, help=argparse.SUPPRESS)
    else:
        p.add_argument(flag, dest=dest, type=_flag_type(settings, key), help=argparse.SUPPRESS)


def _flag_type(settings: Settings, key: str) -> Callable[[str], Any]:
    """The argparse `type=` of a named flag: its setting's type and rule, read from the config class
    only when the flag is given. A list (--classes) is left as text for its command to split."""

    def parse(text: str) -> Any:
        leaf = next(leaf for leaf in leaves(settings.config()()) if leaf.key == key)
        kind = _unwrap_optional(leaf.hint)
        return checked(kind, rule_of(leaf.field))(text) if kind in (int, float, str) else text

    return parse


def checked(kind: type, rule: Rule) -> Callable[[str], Any]:
    """An argparse `type=`: the flag's text as `kind` (int, float or str), refused with a one-line
    usage error before any work unless it keeps `rule`."""

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


class CommandParser(argparse.ArgumentParser):
    """A command's parser: its --help ends with the command's settings, read from the config
    dataclass only then."""

    settings: Settings | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return text if self.settings is None else f"{text}\n{settings_help(self.settings)}"


# Setting types as --help names them.
TYPE_NAMES = {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL", list: "LIST", tuple: "LIST", dict: "DICT"}
HELP_COLUMN = 44  # where a setting's words start, unless every key of its section is shorter


def settings_help(settings: Settings) -> str:
    """Every setting of a command, one section after another: `--key=TYPE (default X)  what it does;
    its range`, with the named flag that also sets it."""
    aliases = {key: flag for dest, key in settings.flags.items() if (flag := "--" + dest.replace("_", "-")) != f"--{key}"}
    sections: dict[str, list[Leaf]] = {"": []}  # the command's own keys first, then its sections'
    for leaf in leaves(settings.config()()):
        sections.setdefault(leaf.key.rpartition(".")[0], []).append(leaf)
    width = shutil.get_terminal_size().columns - 2  # argparse's own width
    intro = "Settings: --key=VALUE (VALUE read as YAML), or the same keys in --config FILE."
    return "\n\n".join([intro, *(_section_help(name, items, aliases, width) for name, items in sections.items() if items)]) + "\n"


def _section_help(section: str, items: list[Leaf], aliases: dict[str, str], width: int) -> str:
    heads = []
    for leaf in items:
        alias = f"; or {aliases[leaf.key]}" if leaf.key in aliases else ""
        heads.append(f"  --{leaf.key}={_type_name(leaf.hint)} (default {yaml_text(leaf.value)}{alias})")
    column = min(max(map(len, heads)) + 2, HELP_COLUMN)
    lines = [f"{section} settings:" if section else "settings:"]
    for head, leaf in zip(heads, items):
        many = _type_name(leaf.hint) == "LIST"
        words = "; ".join(filter(None, (help_of(leaf.field), rule_of(leaf.field).describe(many))))
        if len(head) + 2 > column:  # the words go on the next lines
            lines.append(head)
            head = ""
        if words:
            lines.append(textwrap.fill(words, width, initial_indent=head.ljust(column), subsequent_indent=" " * column))
        elif head:
            lines.append(head)
    return "\n".join(lines)


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _type_name(hint: Any) -> str:
    hint = _unwrap_optional(hint)
    return TYPE_NAMES.get(typing.get_origin(hint) or hint, "VALUE")


def yaml_text(value: Any) -> str:
    """`value` as it is written in a YAML file or after --key= (true, null, [0.9, 0.95], 0.001)."""
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True, width=math.inf)
    return text.strip().removesuffix("\n...").strip()


def run(args: argparse.Namespace, overrides: list[str]) -> str:
    """Run one subcommand; return the line to print."""
    handler = globals()["_cmd_" + args.command.replace("-", "_")]
    return handler(args, overrides)


def _cmd_train_tokenizer(args, overrides):
    from stage1_vqvae.train import train_tokenizer

    return f"tokenizer: {train_tokenizer(_settings(args, overrides), args.out, resume=args.resume)}"


def _settings(args: argparse.Namespace, overrides: list[str], base: Any = None) -> Any:
    settings = SETTINGS[args.command]
    flags = {key: getattr(args, dest) for dest, key in settings.flags.items()}
    return command_config(args.command, args.config, overrides, flags=flags, base=base)


def command_config(command: str, path: str | Path | None = None, overrides: list[str] = (), *,
                   flags: dict[str, Any] | None = None, base: Any = None) -> Any:
    """A command's config (`SETTINGS`): its defaults (or `base`), then the YAML at `path` (its own
    section and data: if a pipeline YAML, else the whole file), then named flags, then --key=value."""
    settings = SETTINGS[command]
    pipeline_keys = () if command == "pipeline" else PIPELINE_SECTIONS  # the pipeline's YAML is its own
    return load_config(settings.config(), path, overrides, section=settings.section, pipeline_keys=pipeline_keys,
                       flags=flags, base=base)


def _cmd_dump_codes(args, overrides):
    from stage1_vqvae.codes import dump_codes

    data = _data_config(args, overrides, tokenizer=args.tokenizer)
    splits = tuple(s for s in args.splits.split(",") if s)
    return f"codes: {dump_codes(args.tokenizer, data, args.out, splits=splits, batch_size=args.batch_size)}"


def _cmd_reconstruct(args, overrides):
    from eval.recon import reconstruct

    data = _data_config(args, overrides, tokenizer=args.tokenizer)
    metrics = reconstruct(args.tokenizer, data, args.out, n=args.n, weights=args.inception_weights,
                          rfid_n=args.rfid_n, cache=_stats_cache(args))
    return "reconstruct: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _data_config(args, overrides, tokenizer: Path | None = None):
    """Data settings, on top of the tokenizer's own training data when there is one (an image size
    or channel count other than the tokenizer's would only be refused later)."""
    from stage1_vqvae.load import TRAINING_FILE, tokenizer_folder, training_data

    holder = data_settings()
    trained = tokenizer is not None and (tokenizer_folder(tokenizer) / TRAINING_FILE).is_file()
    return _settings(args, overrides, base=holder(training_data(tokenizer)) if trained else None).data


def _cmd_train_prior(args, overrides):
    from stage2_prior.train import train_prior

    cfg = _settings(args, overrides)
    if not cfg.codes:
        raise VqgenError("train-prior: no code grids given; pass --codes DIR (written by vqgen dump-codes)")
    return f"prior: {train_prior(cfg, args.out, resume=args.resume)}"


def _cmd_sample(args, overrides):
    from sampling.decode import sample

    prior, tokenizer = _prior_and_tokenizer(args)
    _split_list_flags(args)
    return f"samples: {sample(prior, tokenizer, _settings(args, overrides), args.out)}"


def _cmd_complete(args, overrides):
    from sampling.completion_folder import complete

    prior, tokenizer = _prior_and_tokenizer(args)
    _split_list_flags(args)
    keep = args.keep_rows if args.keep_mask is None else args.keep_mask
    return f"completions: {complete(prior, tokenizer, args.image, keep, _settings(args, overrides), args.out)}"


def _prior_and_tokenizer(args: argparse.Namespace) -> tuple[Path, Path]:
    """The generator of `--run WHERE`, or of `--prior` with `--tokenizer`: exactly one of the two forms."""
    from vqgen.generator import locate_generator

    given = [flag for flag, value in (("--prior", args.prior), ("--tokenizer", args.tokenizer)) if value is not None]
    if args.run is not None and given:
        raise VqgenError(f"--run and {' and '.join(given)} both name a generator; pass --run WHERE alone, or "
                         "--prior with --tokenizer")
    if args.run is not None:
        found = locate_generator(args.run)
        return found.prior, found.tokenizer
    if len(given) < 2:
        raise VqgenError("no generator given; pass --run WHERE (a pipeline run, a bundle or a Hub repo id), or "
                         "--prior DIR with --tokenizer DIR")
    return args.prior, args.tokenizer


def _split_list_flags(args: argparse.Namespace) -> None:
    """The list flags of the sample settings, given as comma-separated text: --classes 0,3 --cfg-interval 0,0.5."""
    if args.classes is not None:
        args.classes = _class_ids(args.classes)
    if args.cfg_interval is not None:
        try:
            args.cfg_interval = [float(v) for v in args.cfg_interval.split(",")]
        except ValueError:
            raise VqgenError(f"--cfg-interval '{args.cfg_interval}': not two comma-separated fractions; write e.g. "
                             "0,0.5") from None


def _class_ids(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise VqgenError(f"--classes '{text}': not a comma-separated list of class ids; write e.g. 0,3,7") from None


def _cmd_fid_ref(args, overrides):
    from eval.fid import fid_ref

    stats = fid_ref(_data_config(args, overrides), args.split, args.out, weights=args.inception_weights, n=args.n,
                    cache=_stats_cache(args))
    return f"reference statistics of {stats.meta.get('n', '?')} images: {args.out}"


def _cmd_fid(args, overrides):
    from eval.fid import fid
    from eval.report import claim_report, score_line, write_report

    # --data.* settings describe a --ref data spec; the samples' own size and channels fill the rest.
    values = parse_overrides(overrides)
    if set(values) - {"data"}:
        raise VqgenError(f"vqgen fid: --{sorted(set(values) - {'data'})[0]}.* is not a fid setting; only --data.* "
                         "(for a --ref data spec) is")
    data = values.get("data", {})
    if args.out is not None:
        claim_report(args.out)  # checked and locked (until exit) before the Inception work, not after it
    result = fid(args.samples, args.ref, n=args.n, weights=args.inception_weights, n_ref=args.ref_n, data=data,
                 cache=_stats_cache(args))
    line = score_line(result)  # each score with the real-data floor's beside it
    if args.out is not None:
        try:
            write_report(args.out, result, title=f"vqgen fid: {args.samples}")  # X.json + X.md, or DIR/
        except VqgenError:
            _echo(line)  # the score is printed whatever happens to the file, then the error line
            raise
    return line


def _cmd_train_classifier(args, overrides):
    from eval.classifier import train_classifier

    return f"classifier: {train_classifier(_settings(args, overrides), args.out, resume=args.resume)}"


def _cmd_pipeline(args, overrides):
    from vqgen.pipeline import run_pipeline

    report = run_pipeline(_settings(args, overrides), args.out, inception_weights=args.inception_weights, echo=_echo,
                          cache=_stats_cache(args))
    return f"report: {report}"


def _cmd_export(args, overrides):
    from vqgen.export import export_run

    if overrides:  # export has no settings: a stray --key=value is a mistake, not something to ignore
        raise VqgenError(f"{overrides[0]}: vqgen export has no settings; pass only --run DIR and --out BUNDLE")
    return f"bundle: {export_run(args.run, args.out)}"


def _cmd_serve(args, overrides):
    from vqgen.serve import serve

    if overrides:  # the page sets the sampling settings; a stray --key=value is a mistake, not something to ignore
        raise VqgenError(f"{overrides[0]}: vqgen serve has no settings (the page sets them); pass --run WHERE and, "
                         "if needed, --host, --port or --share")
    return f"serve: {serve(args.run, args.host, args.port, args.share)} stopped"


def _stats_cache(args: argparse.Namespace):
    """The per-user cache of Inception statistics (eval/cache.py), its folder checked now, before any
    work; None with --no-cache."""
    from eval.cache import StatsCache

    return None if args.no_cache else StatsCache()


def _echo(line: str) -> None:
    if _is_main_process():
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
        return _fail(f"vqgen {args.command}: error: {err}", 2)
    except KeyboardInterrupt:
        return _fail(f"vqgen {args.command}: interrupted; {RESUME_HINT.get(args.command, 'run it again')}", 130)
    if _is_main_process():
        print(f"{line}  ({time.time() - started:.1f} s)")
    return 0


def _fail(line: str, code: int) -> int:
    """Print the error `line` once, from the main process (under `accelerate launch` every process
    meets the same error: the settings and the output checks are the same everywhere); the others log
    theirs at DEBUG level, in case it was theirs alone. Progress bars are closed by now (each is a
    context of its own), so the line starts a line of its own."""
    if _is_main_process():
        print(line, file=sys.stderr)
    else:
        logging.getLogger(__name__).debug("%s", line)
    return code


def _is_main_process() -> bool:
    from core.distributed import process_state

    return process_state().is_main_process
