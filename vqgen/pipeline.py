"""`vqgen pipeline`: tokenizer -> codes -> prior -> samples -> eval, in one resumable run folder.

Each stage's result is recorded in OUT/stages/<name>.json when it finishes; run again, finished
stages are skipped and the stage that was interrupted resumes from its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from core.config import Copies, setting, to_dict
from core.data import SPLITS, DataConfig, load_images
from core.loop.tracking import log_pictures_after
from core.runs import MetricsLog, atomic_path, claim_output, finished_record, run_stage
from eval.cache import StatsCache
from eval.classifier import ClassifierRunConfig, train_classifier
from eval.classifier_fid import classifier_fid
from eval.fid import fid
from eval.recon import TOP_ONLY_PNG, reconstruct
from sampling.decode import FREE_SETTINGS, sample
from sampling.generate import SampleConfig
from stage1_vqvae.codes import dump_codes
from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer
from stage2_prior.train import PriorRunConfig, train_prior
from vqgen.preflight import check_pipeline
from vqgen.report import write_run_report

# Settings that change how a stage runs, not what it produces: a rerun may change them.
RUNTIME_ONLY = {"train": ("log_every", "eval_every", "save_every", "keep_checkpoints", "num_workers", "log_with"),
                "sample": FREE_SETTINGS}


@dataclass
class EvalConfig:
    # KID needs 4 images a side, rFID's covariance 2.
    inception_n: int = setting(1000, "samples scored with Inception FID/KID; 0: all of them", ge=4, choices=(0,))
    ref_split: str = setting("test", "the split the samples are compared with", choices=SPLITS)
    ref_n: int = setting(0, "reference images; 0: the whole split", ge=4, choices=(0,))
    recon_n: int = setting(64, "val images in reconstructions.png", ge=1)
    rfid_n: int = setting(1000, "val images for rFID; 0: recon_n", ge=2, choices=(0,))
    use_classifier: bool = setting(True, "small-data classifier FID/IS, for labelled data sets")
    classifier: ClassifierRunConfig = field(default_factory=ClassifierRunConfig)


@dataclass
class PipelineConfig:
    """Every stage's settings; load it with `core.config.load_config(PipelineConfig, path, overrides)`."""

    # One data set serves every stage: the stages that read data copy the top-level `data:`.
    copies: ClassVar[Copies] = Copies(
        {"tokenizer.data": "data", "eval.classifier.data": "data"},
        why="the pipeline uses one data set for every stage; set it in the top-level data: section",
    )

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerRunConfig = field(default_factory=TokenizerRunConfig)
    prior: PriorRunConfig = field(default_factory=PriorRunConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def resolved_yaml(cfg: PipelineConfig) -> str:
    """config.yaml of a run: every setting, without the copies of `data:` (so it loads again)."""
    return yaml.safe_dump(to_dict(cfg, copies=False), sort_keys=False)


def stage_settings(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """What a stage's result depends on: a finished stage is reused only while these are unchanged."""
    c = _without_runtime(to_dict(cfg))
    ev = c["eval"]
    return {"tokenizer": {"tokenizer": c["tokenizer"]}, "codes": {"data": c["data"]}, "prior": {"prior": c["prior"]},
            "samples": {"sample": c["sample"]},
            "reconstruct": {"data": c["data"], "recon_n": ev["recon_n"], "rfid_n": ev["rfid_n"]},
            "fid": {k: ev[k] for k in ("inception_n", "ref_split", "ref_n")},
            "classifier": {"classifier": ev["classifier"], "ref_split": ev["ref_split"]}}[name]


def _without_runtime(values: dict[str, Any]) -> dict[str, Any]:
    """`values` without the RUNTIME_ONLY keys of any `train:` or `sample:` section, at any depth."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, dict):
            dropped = RUNTIME_ONLY.get(key, ())
            value = _without_runtime({k: v for k, v in value.items() if k not in dropped})
        kept[key] = value
    return kept


@dataclass
class _Context:
    cfg: PipelineConfig
    out: Path
    inception_weights: Path | None
    cache: StatsCache | None = None  # Inception statistics of data splits (reference, floor, rFID originals)

    @property
    def tokenizer(self) -> Path:
        return self.out / "tokenizer" / "model"

    @property
    def samples(self) -> Path:
        return self.out / "samples" / "images"


def run_pipeline(cfg: PipelineConfig, out: str | Path, inception_weights: str | Path | None = None,
                 echo: Callable[[str], None] = lambda line: None, cache: StatsCache | None = None) -> Path:
    """Run (or resume) every stage into `out`; returns the path of report.md. `cfg` comes from
    `load_config`, so the tokenizer and the classifier read the top-level `data:`. With `cache`, the
    Inception statistics of data splits are read from it, or computed once and stored there."""
    ctx = _Context(cfg, Path(out), Path(inception_weights) if inception_weights else None, cache)
    check_pipeline(cfg, ctx.inception_weights)  # before anything runs or is written
    stages = _stages(ctx)
    for name, _ in stages:  # refuse changed settings before config.yaml says they ran
        finished_record(ctx.out, name, stage_settings(cfg, name))
    with claim_output(ctx.out, "pipeline"):
        (ctx.out / "stages").mkdir(parents=True, exist_ok=True)  # first: it marks the folder as a pipeline run
        with atomic_path(ctx.out / "config.yaml") as tmp:
            tmp.write_text(resolved_yaml(cfg))
        records = {}
        for number, (name, body) in enumerate(stages, 1):
            records[name] = run_stage(ctx.out, name, _timed(body, ctx), settings=stage_settings(cfg, name))
            when = "done earlier" if records[name].get("skipped") else f"{records[name]['seconds']:.1f} s"
            echo(f"[{number}/{len(stages)}] {name:<11} {when}")
        return write_run_report(ctx.out, records)


def _timed(body: Callable[[_Context], dict[str, Any]], ctx: _Context) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        started = time.time()
        result = body(ctx)
        return {**result, "seconds": round(time.time() - started, 1)}

    return run


def _stages(ctx: _Context) -> list[tuple[str, Callable[[_Context], dict[str, Any]]]]:
    stages = [("tokenizer", _tokenizer), ("codes", _codes), ("prior", _prior), ("samples", _samples),
              ("reconstruct", _reconstruct), ("fid", _fid)]
    labelled = load_images(ctx.cfg.data, ctx.cfg.eval.ref_split).num_classes > 0
    if ctx.cfg.eval.use_classifier and labelled:
        stages.append(("classifier", _classifier))
    return stages


def _last(log_path: Path, prefix: str) -> dict[str, float]:
    """The newest value of every metric starting with `prefix` in a metrics.jsonl."""
    latest: dict[str, float] = {}
    for record in MetricsLog(log_path).read():
        latest.update({k: v for k, v in record.items() if k.startswith(prefix)})
    return latest


def _tokenizer(ctx: _Context) -> dict[str, Any]:
    train_tokenizer(ctx.cfg.tokenizer, ctx.out / "tokenizer", resume=True)
    return _last(ctx.out / "tokenizer" / "metrics.jsonl", "val/")


def _codes(ctx: _Context) -> dict[str, Any]:
    return {"path": str(dump_codes(ctx.tokenizer, ctx.cfg.data, ctx.out / "codes"))}


def _prior(ctx: _Context) -> dict[str, Any]:
    cfg = dataclasses.replace(ctx.cfg.prior, codes=str(ctx.out / "codes"))
    train_prior(cfg, ctx.out / "prior", resume=True)
    # The arch tells the report which metrics the prior has (bits/token, or masked-code NLL).
    return {"arch": cfg.arch, **_last(ctx.out / "prior" / "metrics.jsonl", "val/")}


def _samples(ctx: _Context) -> dict[str, Any]:
    folder = sample(ctx.out / "prior" / "model", ctx.tokenizer, ctx.cfg.sample, ctx.out / "samples")
    train = ctx.cfg.prior.train
    log_pictures_after(ctx.out / "prior", train.log_with, {"samples/grid": folder / "grid.png"}, train.steps)
    return {"n": len(list(ctx.samples.glob("*.png"))), "grid": str(folder / "grid.png")}


def _reconstruct(ctx: _Context) -> dict[str, Any]:
    folder = ctx.out / "eval" / "reconstruct"
    metrics = reconstruct(ctx.tokenizer, ctx.cfg.data, folder, n=ctx.cfg.eval.recon_n,
                          weights=ctx.inception_weights, rfid_n=ctx.cfg.eval.rfid_n, cache=ctx.cache)
    for picture in ("reconstructions.png", TOP_ONLY_PNG):  # the top-only one: two-level tokenizers only
        if (folder / picture).is_file():
            shutil.copyfile(folder / picture, ctx.out / picture)
    return metrics


def _fid(ctx: _Context) -> dict[str, Any]:
    ev = ctx.cfg.eval
    return fid(ctx.samples, ctx.cfg.data, n=ev.inception_n, weights=ctx.inception_weights, n_ref=ev.ref_n,
               split=ev.ref_split, cache=ctx.cache)


def _classifier(ctx: _Context) -> dict[str, Any]:
    model = train_classifier(ctx.cfg.eval.classifier, ctx.out / "classifier", resume=True)
    scores = classifier_fid(model, ctx.samples, ctx.cfg.data, split=ctx.cfg.eval.ref_split)
    return {**scores, **_last(ctx.out / "classifier" / "metrics.jsonl", "val/")}
