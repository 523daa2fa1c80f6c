"""A prior folder whose config.json and vqgen_prior.json come from different priors (mixed up by hand, or
one file edited) is one line naming both files, from `load_prior`, never an error deep in sampling;
every prior vqgen itself builds fits its codes."""

import shutil

import pytest
import torch

from core.code_grids import GridLevel
from core.errors import VqgenError
from stage2_prior.load import META_FILE, load_prior
from stage2_prior.registry import prior_kind
from stage2_prior.train import PriorRunConfig, build_prior_levels
from stage2_prior.vocab import PriorVocab
from tests.tiny_generator import ONE_LEVEL, TWO_LEVELS, N, save_prior

WIDE = [GridLevel("codes", 4, 4, 64)]  # more codes than the tiny priors' K=16
LONG = [GridLevel("codes", 8, 8, 16)]  # a longer sequence than their 4x4 grid
TALL = [TWO_LEVELS[0], GridLevel("bottom", 8, 8, 16)]  # the same, under the two-level priors' top grid
POSITIONS = "is too small for T=64 codes (codes 8x8 (K=16)) + 1 condition token (needs >= 65)"
PIXELCNN_TOP = ("top_codebook_size=0, top_grid_h=0, top_grid_w=0 where top 2x2 (K=8), bottom 4x4 (K=16) with N=3 "
                "classes need top_codebook_size=8, top_grid_h=2, top_grid_w=2")


def refusal(folder) -> str:
    with pytest.raises(VqgenError) as err:
        load_prior(folder)
    return str(err.value)


def expected(folder, problem: str) -> str:
    return (f"{folder / 'config.json'} does not fit {folder / META_FILE}: {problem}; the files come from different "
            "priors; copy the folder again or train one with `vqgen train-prior`")


@pytest.mark.parametrize("arch, levels, meta_levels, meta_classes, problem", [
    ("gpt", ONE_LEVEL, WIDE, N, "vocab_size 20 is too small for K=64 codes + 3 classes + 1 (needs >= 68)"),
    ("gpt", ONE_LEVEL, LONG, N, f"max_position_embeddings 17 {POSITIONS}"),
    ("gpt", ONE_LEVEL, TWO_LEVELS, N, "vocab_size 20 is too small for K=24 codes + 3 classes + 1 (needs >= 28)"),
    ("gpt", TWO_LEVELS, TALL, N,
     "max_position_embeddings 21 is too small for T=68 codes (top 2x2 (K=8), bottom 8x8 (K=16)) + 1 condition token "
     "(needs >= 69)"),
    ("maskgit", ONE_LEVEL, WIDE, N, "vocab_size 21 is too small for K=64 codes + 3 classes + 1 + [MASK] (needs >= 69)"),
    ("maskgit", ONE_LEVEL, LONG, N, f"max_position_embeddings 17 {POSITIONS}"),
    ("pixelcnn", ONE_LEVEL, TWO_LEVELS, N, PIXELCNN_TOP),
    ("pixelcnn", TWO_LEVELS, ONE_LEVEL, N,
     "top_codebook_size=8, top_grid_h=2, top_grid_w=2 where codes 4x4 (K=16) with N=3 classes need "
     "top_codebook_size=0, top_grid_h=0, top_grid_w=0"),
    ("pixelcnn", ONE_LEVEL, WIDE, N, "codebook_size=16 where codes 4x4 (K=64) with N=3 classes need codebook_size=64"),
    ("pixelcnn", TWO_LEVELS, TALL, N,
     "grid_h=4, grid_w=4 where top 2x2 (K=8), bottom 8x8 (K=16) with N=3 classes need grid_h=8, grid_w=8"),
    ("pixelcnn", ONE_LEVEL, ONE_LEVEL, 0, "num_classes=3 where codes 4x4 (K=16) with N=0 classes need num_classes=0"),
])
def test_a_folder_mixed_from_two_priors_is_one_line_naming_both_files(tmp_path, arch, levels, meta_levels,
                                                                      meta_classes, problem):
    folder = save_prior(tmp_path / "prior", None, arch=arch, levels=levels)
    other = save_prior(tmp_path / "other", None, meta_classes, arch, meta_levels)
    shutil.copy(other / META_FILE, folder / META_FILE)
    assert refusal(folder) == expected(folder, problem)


@pytest.mark.parametrize("arch, levels, key, value, problem", [
    # Llama's positions are rotary: no weight holds their count, so only vqgen_prior.json can tell.
    ("gpt", ONE_LEVEL, "max_position_embeddings", 16,
     "max_position_embeddings 16 is too small for T=16 codes (codes 4x4 (K=16)) + 1 condition token (needs >= 17)"),
    ("pixelcnn", TWO_LEVELS, "top_grid_h", 1,
     "top_grid_h=1 where top 2x2 (K=8), bottom 4x4 (K=16) with N=3 classes need top_grid_h=2"),
    ("pixelcnn", ONE_LEVEL, "grid_w", 2, "grid_w=2 where codes 4x4 (K=16) with N=3 classes need grid_w=4"),
])
def test_an_edited_config_that_no_longer_fits_the_codes_is_one_line(tmp_path, arch, levels, key, value, problem):
    folder = save_prior(tmp_path / "prior", None, arch=arch, levels=levels)
    config = folder / "config.json"
    text = config.read_text()
    old = next(line for line in text.splitlines() if line.strip().startswith(f'"{key}":'))
    config.write_text(text.replace(old, old.split(":")[0] + f": {value},"))
    assert refusal(folder) == expected(folder, problem)


@pytest.mark.parametrize("arch, family, model", [
    ("gpt", "llama", {}), ("gpt", "gpt2", {}), ("gpt", "llama", {"vocab_size": 100, "max_position_embeddings": 99}),
    ("gpt", "gpt2", {"vocab_size": 100, "n_positions": 99}), ("pixelcnn", "llama", {}), ("maskgit", "llama", {}),
    ("maskgit", "llama", {"vocab_size": 100, "max_position_embeddings": 99}),
])
def test_every_prior_vqgen_builds_fits_its_codes(arch, family, model):
    """Built as `vqgen train-prior` builds it, with the overrides a user may give (a larger vocabulary or
    sequence than the codes need), a prior fits one and two levels; the GPT-2 family's key is named as
    its config.json spells it."""
    kind = prior_kind(arch)
    for levels in (ONE_LEVEL, TWO_LEVELS)[:kind.max_levels]:
        vocab = PriorVocab.of_levels([lv.codebook_size for lv in levels], N)
        with torch.device("meta"):
            prior = build_prior_levels(PriorRunConfig(arch=arch, preset="demo", family=family, model=model), vocab,
                                       levels)
        assert kind.fit_problem(prior.config, levels, vocab) is None
    if family == "gpt2" and not model:
        assert kind.fit_problem(prior.config, LONG, PriorVocab(16, N)) == f"n_positions 21 {POSITIONS}"
