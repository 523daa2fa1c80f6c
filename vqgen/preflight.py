"""The pipeline's checks before stage 1: each refusal a later stage would make, made up front.

A setting that only a later stage can judge (the number of samples against eval.inception_n, a class
id against the data's labels, a batch against the training split, a prior preset) would otherwise
stop a run hours in, naming a flag of a single-stage command. Here each is refused before anything
runs or is written, naming the pipeline's keys. The data set is opened (its size and labels), the
model configs are built and the prior is built on the meta device (no weights allocated), and the
Inception weights (and LPIPS's VGG16 weights, for a perceptual loss) are found; nothing is trained.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.code_grids import GridLevel, describe_levels
from core.config import check
from core.data import load_images
from core.distributed import process_state
from core.errors import VqgenError
from core.loop import TrainConfig
from eval.inception import find_weights
from sampling.generate import UNCOND, GridSpec, check_config, plan_labels
from sampling.samplers import sampler_for
from stage1_vqvae.train import build_model_config, check_loss_settings, model_settings
from stage2_prior.registry import archs_for, prior_kind
from stage2_prior.train import build_prior_levels
from stage2_prior.vocab import PriorVocab

if TYPE_CHECKING:
    from vqgen.pipeline import PipelineConfig

KID_MIN = 4  # images a side for the unbiased KID estimate (two per subset)
RFID_MIN = 2  # a covariance needs two images; one gives NaN


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What the checks need from the data set: split sizes, labels and channels."""

    train: int
    val: int
    ref: int
    num_classes: int
    channels: int


def check_pipeline(cfg: PipelineConfig, inception_weights: str | Path | None = None) -> None:
    """Raise one VqgenError line for the first setting a later stage would refuse."""
    check(cfg)  # a PipelineConfig built in Python has not been through the config loader
    facts = data_facts(cfg)
    classifier = cfg.eval.use_classifier and facts.num_classes > 0
    _check_batches(cfg, facts, classifier)
    _check_models(cfg, facts)
    _check_samples(cfg, facts)
    _check_eval(cfg, facts)
    if classifier:
        _check_classifier(cfg, facts)
    find_weights(inception_weights)


def data_facts(cfg: PipelineConfig) -> DataFacts:
    train, val = load_images(cfg.data, "train"), load_images(cfg.data, "val")
    ref = load_images(cfg.data, cfg.eval.ref_split)
    return DataFacts(len(train), len(val), len(ref), train.num_classes, train.channels)


def _check_batches(cfg: PipelineConfig, facts: DataFacts, classifier: bool) -> None:
    """Each stage's global batch fits its training split and splits over processes and accumulation."""
    trains: list[tuple[str, TrainConfig]] = [("tokenizer.train", cfg.tokenizer.train), ("prior.train", cfg.prior.train)]
    if classifier:
        trains.append(("eval.classifier.train", cfg.eval.classifier.train))
    processes = process_state().num_processes
    for key, train in trains:
        if train.batch_size > facts.train:
            raise VqgenError(f"{key}.batch_size={train.batch_size} is larger than the {facts.train} training images "
                             f"of data '{cfg.data.spec}'; lower it")
        if train.batch_size % (processes * train.grad_accum):
            raise VqgenError(f"{key}.batch_size={train.batch_size} is not divisible by {processes} process(es) x "
                             f"{key}.grad_accum={train.grad_accum}; choose a multiple")


def _check_models(cfg: PipelineConfig, facts: DataFacts) -> None:
    """The tokenizer's config, the prior for its levels (grids and codebooks) and the data's classes,
    and the settings the prior's sampler takes (MaskGIT's steps within T, no KV cache; no steps for an
    AR prior)."""
    tokenizer = build_model_config(model_settings(cfg.tokenizer), cfg.data, facts.channels)
    check_loss_settings(cfg.tokenizer)  # LPIPS weights found, no Inception backbone, a patch left
    levels = [GridLevel(s.name, s.grid_h, s.grid_w, s.codebook_size) for s in tokenizer.level_specs]
    if len(levels) > prior_kind(cfg.prior.arch).max_levels:
        able = " or ".join(f"prior.arch={arch}" for arch in archs_for(len(levels)))
        raise VqgenError(f"prior.arch={cfg.prior.arch} takes one grid of codes in this version, and "
                         f"tokenizer.model.levels={len(levels)} makes {describe_levels(levels)}; use {able}, "
                         "which model both levels, or tokenizer.model.levels=1")
    spec = GridSpec.of_levels(PriorVocab.of_levels([lv.codebook_size for lv in levels], facts.num_classes), levels)
    with torch.device("meta"):
        build_prior_levels(cfg.prior, spec.vocab, levels)
    sampler_for(cfg.prior.arch).check(cfg.sample, spec, f"prior.arch={cfg.prior.arch}")


def _check_samples(cfg: PipelineConfig, facts: DataFacts) -> None:
    """Classes the prior has, enough samples for eval.inception_n, and guidance it was trained for."""
    sample = cfg.sample
    check_config(sample, facts.num_classes, source=f"data '{cfg.data.spec}'")
    count = len(plan_labels(sample, facts.num_classes))
    drawn = (f"sample.per_class={sample.per_class} x {count // sample.per_class} classes = {count} samples"
             if sample.per_class else f"sample.n={count}")
    raise_it = "sample.per_class" if sample.per_class else "sample.n"
    if cfg.eval.inception_n > count:
        raise VqgenError(f"{drawn} < eval.inception_n={cfg.eval.inception_n}; raise {raise_it} or lower "
                         "eval.inception_n")
    if count < KID_MIN:
        raise VqgenError(f"{drawn}: FID and KID need at least {KID_MIN} samples; raise {raise_it}")
    uses = (f"sample.cfg_scale={sample.cfg_scale}" if sample.cfg_scale != 1.0
            else "sample.classes -1" if UNCOND in (sample.classes or []) else None)
    if facts.num_classes and uses and cfg.prior.label_dropout == 0:
        raise VqgenError(f"{uses} needs the unconditional token, which prior.label_dropout=0 never trains; "
                         "set prior.label_dropout > 0 (0.1 is usual)")


def _check_eval(cfg: PipelineConfig, facts: DataFacts) -> None:
    """Enough reference images for KID and val images for rFID."""
    ev = cfg.eval
    if min(ev.ref_n or facts.ref, facts.ref) < KID_MIN:
        raise VqgenError(f"eval.ref_split={ev.ref_split}: data '{cfg.data.spec}' has {facts.ref} {ev.ref_split} "
                         f"images; FID and KID need at least {KID_MIN}; use a larger split")
    if facts.val < RFID_MIN:
        raise VqgenError(f"data '{cfg.data.spec}': the val split holds {facts.val} image; rFID needs {RFID_MIN}; "
                         "raise data.val_fraction")
    if not ev.rfid_n and ev.recon_n < RFID_MIN:
        raise VqgenError(f"eval.rfid_n=0 scores eval.recon_n={ev.recon_n} val image; rFID needs {RFID_MIN}; "
                         f"set eval.rfid_n >= {RFID_MIN}")


def _check_classifier(cfg: PipelineConfig, facts: DataFacts) -> None:
    """Two classes at least, a test split to evaluate on, and an image each conv stage can halve."""
    if facts.num_classes < 2:
        raise VqgenError(f"eval.use_classifier: data '{cfg.data.spec}' has {facts.num_classes} class; the "
                         "classifier needs 2; set eval.use_classifier=false")
    stages = len(cfg.eval.classifier.widths)
    if cfg.data.image_size < 2**stages:
        raise VqgenError(f"eval.classifier.widths: {stages} stages halve data.image_size={cfg.data.image_size} "
                         f"{stages} times; use at most {int(math.log2(cfg.data.image_size))} widths")
    load_images(cfg.data, "test")  # the classifier's evaluation split
