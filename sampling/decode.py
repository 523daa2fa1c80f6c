"""`sample`: draw code grids from a trained prior and decode them into images with the tokenizer.

Resumable and distributed: sample i's label and random stream depend only on i (see
`sampling.generate`), so a rerun makes exactly the indices that are not yet on disk, and under
`accelerate launch` the missing indices are split between processes (no duplicates, no gaps);
the main process joins the results at the end. Layout of the output folder: `sampling.write`.
A two-level prior's grids (top and bottom) are decoded together by the tokenizer's `decode_levels`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm import tqdm

from core.code_grids import describe_levels
from core.distributed import process_state
from core.errors import VqgenError
from core.runs import claim_output, disk_full_is_user_error, read_json, sha256_file, write_json
from sampling.generate import GridSpec, SampleConfig, check_config, generate, plan_labels
from sampling.samplers import sampler_for
from sampling.write import GRID_MAX, finished, join_codes, write_grid, write_images, write_shard
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.model import VQVAE
from stage2_prior.load import LoadedPrior, load_prior, prior_folder
from stage2_prior.vocab import Codes

logger = logging.getLogger(__name__)

SETTINGS_FILE = "sample_config.json"
# Settings that do not change what is sampled; a resumed run may change them.
FREE_SETTINGS = ("batch_size", "kv_cache")  # kv_cache: every cache gives the same tokens (tested)
# Every file is written whole or not at all (sampling.write), so what is there can be trusted.
DISK_FULL_INTACT = "the samples finished before are kept whole: free some space and run the same command to continue"


def check_pair(prior: LoadedPrior, prior_dir: Path, tokenizer: VQVAE, two_levels: bool = False) -> str:
    """Refuse a tokenizer the prior was not trained on; returns the tokenizer's sha256. A two-level
    prior is refused unless the caller draws two levels (`two_levels`: `sample` does, others not yet)."""
    meta, config = prior.meta, tokenizer.config
    source = prior_folder(prior_dir) / "vqgen_prior.json"
    if len(meta.levels) > 1 and not two_levels:
        raise VqgenError(
            f"{source}: a two-level prior ({describe_levels(meta.levels)}); this command takes one-level priors "
            "in this version (completing, serving and exporting two levels come later): use `vqgen sample`"
        )
    _check_levels(prior, source, tokenizer)
    if len(meta.levels) == 1:
        ours = (meta.codebook_size, meta.grid_h, meta.grid_w)
        theirs = (config.codebook_size, config.grid_size, config.grid_size)
        if ours != theirs:
            raise VqgenError(
                f"{source}: the prior samples K={ours[0]} codes on a {ours[1]}x{ours[2]} grid but the tokenizer "
                f"{tokenizer.name_or_path} has K={theirs[0]} and a {theirs[1]}x{theirs[2]} grid; pass its own "
                "tokenizer"
            )
    weights = Path(tokenizer.name_or_path) / "model.safetensors"
    digest = sha256_file(weights)
    if digest != meta.tokenizer_sha256:
        raise VqgenError(
            f"{source}: tokenizer_sha256 {meta.tokenizer_sha256[:12]}... does not match {weights} "
            f"({digest[:12]}...); pass the tokenizer the prior's codes were made with"
        )
    return digest


def _check_levels(prior: LoadedPrior, source: Path, tokenizer: VQVAE) -> None:
    """The tokenizer must have the prior's levels: as many, each with the prior's name, grid and K. A
    one-level pair's grid and K are compared by check_pair (its message as before levels existed)."""
    ours, theirs = prior.meta.levels, tokenizer.config.level_specs
    if len(ours) == len(theirs) == 1:
        return
    drawn = (f"one grid ({ours[0].grid_h}x{ours[0].grid_w}, K={ours[0].codebook_size})" if len(ours) == 1
             else f"{len(ours)} levels ({describe_levels(ours)})")
    if len(ours) != len(theirs) or any((a.name, a.grid_h, a.grid_w, a.codebook_size) !=
                                       (b.name, b.grid_h, b.grid_w, b.codebook_size) for a, b in zip(ours, theirs)):
        raise VqgenError(
            f"{source}: the prior draws {drawn} but the tokenizer {tokenizer.name_or_path} has {len(theirs)} "
            f"level{'s' if len(theirs) > 1 else ''} ({describe_levels(theirs)}); pass the tokenizer the prior was "
            "trained with"
        )


def claim_folder(out: Path, settings: dict, file: str = SETTINGS_FILE) -> None:
    """Record what OUT holds in OUT/`file`; a rerun must ask for the same samples (batch size aside).
    A key the recorded settings lack is a setting added since, whose null default is what they ran with."""
    path = out / file
    if path.is_file():
        old = read_json(path, "sample settings")
        changed = sorted(k for k in settings.keys() | old.keys()
                         if k not in FREE_SETTINGS and old.get(k) != settings.get(k))
        if changed:
            raise VqgenError(
                f"{path}: {out} holds samples made with other settings ({', '.join(changed)}); "
                "pass a new output folder or delete this one"
            )
    write_json(path, settings)


def grid_layout(cfg: SampleConfig, count: int) -> tuple[list[int], int]:
    """Indices shown in grid.png and images per row: with per_class, the first few of every class,
    one row per class (the first 100 indices would all be class 0); else the first 100, 10 a row."""
    if cfg.per_class > 0:
        row = min(cfg.per_class, 10)
        return [start + i for start in range(0, count, cfg.per_class) for i in range(row)], row
    return list(range(min(count, GRID_MAX))), 10


def sample(prior_dir: str | Path, tokenizer_dir: str | Path, cfg: SampleConfig, out: str | Path) -> Path:
    """Sample with the prior at `prior_dir`, decode with the tokenizer at `tokenizer_dir`, write
    OUT/images/*.png, OUT/codes.npz and OUT/grid.png. Returns OUT."""
    state, out = process_state(), Path(out)
    prior, tokenizer = load_prior(prior_dir), load_tokenizer(tokenizer_dir)
    settings = {**dataclasses.asdict(cfg),
                "tokenizer_sha256": check_pair(prior, Path(prior_dir), tokenizer, two_levels=True),
                "prior_sha256": sha256_file(prior_folder(prior_dir) / "model.safetensors")}
    if cfg.per_class > 0:
        settings["n"] = None  # ignored: the count is per_class x classes
    check_config(cfg, prior.meta.num_classes, source=str(prior_folder(prior_dir)))
    sampler_for(prior.meta.arch).check(cfg, grid_spec(prior), str(prior_folder(prior_dir)))
    labels = plan_labels(cfg, prior.meta.num_classes)
    with claim_output(out, "samples"), disk_full_is_user_error(out, DISK_FULL_INTACT):
        if state.is_main_process:
            claim_folder(out, settings)
        state.wait_for_everyone()
        done = finished(out, labels)
        todo = [i for i in range(len(labels)) if i not in done]
        logger.info("sampling %d images into %s (%d already there)", len(todo), out, len(done))
        with state.split_between_processes(todo) as mine:
            _sample_indices(prior, tokenizer, cfg, labels, mine, out, state)
        state.wait_for_everyone()
        if state.is_main_process:
            join_codes(out, len(labels))
            write_grid(out, labels, *grid_layout(cfg, len(labels)))
        state.wait_for_everyone()
    return out


def grid_spec(prior: LoadedPrior) -> GridSpec:
    return GridSpec.of_levels(prior.meta.vocab, prior.meta.levels)


def decode(tokenizer: VQVAE, codes: Codes) -> torch.Tensor:
    """Sampled codes (one grid, or {level: grid}) -> images (B, C, H, W) in [-1, 1]."""
    if isinstance(codes, torch.Tensor):
        return tokenizer.decode_codes(codes)
    return tokenizer.decode_levels(codes)


def _sample_indices(prior: LoadedPrior, tokenizer: VQVAE, cfg: SampleConfig, labels: torch.Tensor,
                    indices: list[int], out: Path, state: PartialState) -> None:
    """Sample, decode and write this process's share of the indices, batch by batch."""
    draw = sampler_for(prior.meta.arch).draw
    model, tokenizer = prior.model.to(state.device), tokenizer.to(state.device)
    batches = generate(model, draw, grid_spec(prior), labels[indices], indices, cfg)
    total = -(-len(indices) // cfg.batch_size)
    # A context: an error closes the bar before the CLI prints it, on a line of its own.
    with tqdm(batches, total=total, desc="sample", disable=not state.is_local_main_process) as bar:
        for batch in bar:
            write_shard(out, batch.indices, batch.labels, batch.codes)
            write_images(out, batch.indices, batch.labels, decode(tokenizer, batch.codes))
