"""A saved prior folder: save_pretrained files plus `vqgen_prior.json`, and loading it back.

`vqgen_prior.json` ties the prior to its code grids: arch, K, (h, w), N, the unconditional token,
the tokenizer's sha256 and the full `vqgen_codes.json`, so sampling can refuse a mismatched
tokenizer and decode without guessing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from transformers import PreTrainedModel

from core.errors import VqgenError
from core.model_folder import load_model, model_folder
from core.runs import read_json, write_json
from stage2_prior.registry import prior_kind
from stage2_prior.vocab import PriorVocab

META_FILE = "vqgen_prior.json"
FIX = "train one with `vqgen train-prior`"


@dataclass
class PriorMeta:
    arch: str  # a name in stage2_prior.registry.PRIORS
    codebook_size: int  # K
    grid_h: int
    grid_w: int
    num_classes: int  # N
    uncond_token: int  # K + N
    tokenizer_sha256: str
    codes_meta: dict  # the code folder's vqgen_codes.json

    @property
    def vocab(self) -> PriorVocab:
        return PriorVocab(self.codebook_size, self.num_classes)


class LoadedPrior(NamedTuple):
    model: PreTrainedModel  # in eval mode
    meta: PriorMeta


def write_prior_meta(model_dir: str | Path, meta: PriorMeta) -> None:
    write_json(Path(model_dir) / META_FILE, dataclasses.asdict(meta))


def read_prior_meta(model_dir: str | Path) -> PriorMeta:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise VqgenError(f"{path}: not found, so {model_dir} is not a prior; pass a folder written by 'vqgen train-prior'")
    data = read_json(path, "prior metadata")
    names = {f.name for f in dataclasses.fields(PriorMeta)}
    missing = sorted(names - set(data))
    if missing:
        raise VqgenError(
            f"{path}: not a vqgen prior file (missing {', '.join(missing)}); point at a folder written by "
            "'vqgen train-prior'"
        )
    prior_kind(data["arch"], source=f"{path}: arch")
    return PriorMeta(**{k: data[k] for k in names})


def prior_folder(path: str | Path) -> Path:
    """The model folder itself, or RUN/model for a training run folder."""
    return model_folder(path, "prior", FIX)


def load_prior(path: str | Path) -> LoadedPrior:
    """Load a prior from its model folder or its training run folder."""
    folder = prior_folder(path)
    meta = read_prior_meta(folder)
    kind = prior_kind(meta.arch)
    model = load_model(kind.loader, folder, "prior", kind.model_types, FIX)
    if problem := kind.config_problem(model.config):
        raise VqgenError(f"{folder}: cannot load the prior (config.json: {problem}); the files are corrupt, "
                         f"copy them again or {FIX}")
    return LoadedPrior(model, meta)
