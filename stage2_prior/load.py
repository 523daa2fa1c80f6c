"""A saved prior folder: save_pretrained files plus `vqgen_prior.json`, and loading it back.

`vqgen_prior.json` ties the prior to its code grids: arch, K, (h, w), N, the unconditional token,
the tokenizer's sha256, the levels (name, grid, K of each, coarse to fine) and the full
`vqgen_codes.json`, so sampling can refuse a mismatched tokenizer and decode without guessing. As in
`vqgen_codes.json`, a two-level prior has K, h and w null at the top level (`levels` holds them); a
file written before `levels` existed reads as one level named `codes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from transformers import PreTrainedModel

from core.code_grids import LEVEL_NAMES, GridLevel
from core.errors import VqgenError
from core.model_folder import CONFIG_FILE, load_model, model_folder
from core.runs import read_json, write_json
from stage2_prior.registry import check_levels, prior_kind
from stage2_prior.vocab import PriorVocab

META_FILE = "vqgen_prior.json"
FIX = "train one with `vqgen train-prior`"


@dataclass
class PriorMeta:
    arch: str  # a name in stage2_prior.registry.PRIORS
    codebook_size: int | None  # K (None for two levels)
    grid_h: int | None
    grid_w: int | None
    num_classes: int  # N
    uncond_token: int  # K + N (two levels: K_top + K_bottom + N)
    tokenizer_sha256: str
    codes_meta: dict  # the code folder's vqgen_codes.json
    # Coarse to fine, as GridLevel or its JSON dict; empty: the one level of the fields above.
    levels: list[GridLevel] = field(default_factory=list)

    def __post_init__(self):
        self.levels = [GridLevel(**lv) if isinstance(lv, dict) else lv for lv in self.levels] or \
            [GridLevel(LEVEL_NAMES[1][0], self.grid_h, self.grid_w, self.codebook_size)]

    @property
    def vocab(self) -> PriorVocab:
        return PriorVocab.of_levels([lv.codebook_size for lv in self.levels], self.num_classes)


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
    missing = sorted(names - set(data) - {"levels"})  # levels: absent from files written before it
    if missing:
        raise VqgenError(
            f"{path}: not a vqgen prior file (missing {', '.join(missing)}); point at a folder written by "
            "'vqgen train-prior'"
        )
    prior_kind(data["arch"], source=f"{path}: arch")
    _check_levels(data.get("levels", []), path)
    meta = PriorMeta(**{k: data[k] for k in names if k in data})
    check_levels(meta.arch, meta.levels, str(path))
    return meta


def _check_levels(levels: object, path: Path) -> None:
    """`levels` must be absent, or one level named codes or two named top, bottom with positive sizes."""
    keys = sorted(f.name for f in dataclasses.fields(GridLevel))
    entries = levels if isinstance(levels, list) and all(isinstance(e, dict) and sorted(e) == keys for e in levels) \
        else None
    if entries == []:
        return
    names = entries and tuple(e["name"] for e in entries)
    sizes_ok = entries and all(type(e[k]) is int and e[k] > 0 for e in entries for k in ("grid_h", "grid_w", "codebook_size"))
    if names not in LEVEL_NAMES.values() or not sizes_ok:
        raise VqgenError(f"{path}: levels must list one level named codes or two named top, bottom, each "
                         f"{{{', '.join(keys)}}} with positive sizes; the file is damaged, {FIX}")


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
    # Each file may be sound on its own and still belong to another prior (a folder mixed from two):
    # sampling would fail deep inside, or draw codes the tokenizer does not have.
    if problem := kind.fit_problem(model.config, meta.levels, meta.vocab):
        raise VqgenError(f"{folder / CONFIG_FILE} does not fit {folder / META_FILE}: {problem}; the files come "
                         f"from different priors; copy the folder again or {FIX}")
    return LoadedPrior(model, meta)
