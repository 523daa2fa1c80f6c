"""Tiny saved generators (a tokenizer folder and a prior folder) for tests of sampling and its users.

Import it as tests import killing.py:
    sys.path.insert(0, str(Path(__file__).parents[1]))   # the tests/ folder
    from tiny_generator import GRID, K, N, save_prior, save_tokenizer  # noqa: E402
(`from tests.tiny_generator import ...` works too when pytest runs as `python -m pytest` from the root.)

The tokenizer turns 8x8 one-channel images into 4x4 grids of K=16 codes (two levels: TWO_LEVELS, a
2x2 top grid of 8 codes over the 4x4 bottom one); the prior has N=3 classes. Seeds are fixed, so two
calls write the same weights. `tiny_run` lays both out as a pipeline run.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel

from core.code_grids import LEVEL_NAMES, GridLevel
from core.config import to_dict
from core.data import DataConfig
from core.runs import sha256_file, write_json
from stage1_vqvae.model import VQVAE, VQVAEConfig
from stage2_prior.gpt import build_gpt_tokens
from stage2_prior.load import PriorMeta, write_prior_meta
from stage2_prior.maskgit import build_maskgit
from stage2_prior.pixelcnn import build_pixelcnn
from stage2_prior.vocab import PriorVocab

K, N, GRID, TOP_K = 16, 3, 4, 8
ONE_LEVEL = [GridLevel(LEVEL_NAMES[1][0], GRID, GRID, K)]
TWO_LEVELS = [GridLevel("top", GRID // 2, GRID // 2, TOP_K), GridLevel("bottom", GRID, GRID, K)]


def save_tokenizer(folder: Path, codebook_size: int = K, image_size: int = 8, *, levels: int = 1, top_k: int = TOP_K,
                   warm: bool = False, seed: int = 0, quantizer: dict | None = None, **config) -> Path:
    """A random VQ-VAE of 8 and 16 channels whose VQ has `codebook_size` codes (or `quantizer`, a
    model.quantizer mapping); `levels=2` adds a top grid of `top_k` codes; `config`: further
    VQVAEConfig fields. `warm` runs one training forward first: the k-means init of the codebooks,
    so that codes spread over the whole codebook."""
    torch.manual_seed(seed)
    two = {"levels": 2, "top_quantizer": {"codebook_size": top_k}} if levels == 2 else {}
    model = VQVAE(VQVAEConfig(**{"image_size": image_size, "base_channels": 8, "channel_mult": (1, 2), "code_dim": 8,
                                 "quantizer": quantizer or {"codebook_size": codebook_size}, **two, **config}))
    if warm:
        model(torch.rand(8, 1, image_size, image_size) * 2 - 1)
    model.save_pretrained(folder)
    return folder


def tiny_prior(arch: str = "gpt", num_classes: int = N, levels: Sequence[GridLevel] = ONE_LEVEL) -> PreTrainedModel:
    """A random prior of `arch` (gpt | maskgit | pixelcnn) over `levels`, in eval mode; the same weights
    every call."""
    torch.manual_seed(1)
    vocab, (*top, grid) = _vocab(levels, num_classes), levels
    if arch == "gpt":
        model = build_gpt_tokens("demo", vocab, sum(lv.grid_h * lv.grid_w for lv in levels), "llama", {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4})
    elif arch == "maskgit":
        model = build_maskgit("demo", grid.codebook_size, num_classes, grid.grid_h, grid.grid_w, hidden_size=32,
                              intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    else:
        model = build_pixelcnn("demo", grid.codebook_size, num_classes, grid.grid_h, grid.grid_w, *top,
                               hidden_size=16, num_layers=2, head_size=16)
    return model.eval()


def save_prior(folder: Path, tokenizer: Path | None, num_classes: int = N, arch: str = "gpt",
               levels: Sequence[GridLevel] = ONE_LEVEL) -> Path:
    """`tiny_prior` saved with its prior_meta, tied to `tokenizer`'s weights (None: to no tokenizer)."""
    tiny_prior(arch, num_classes, levels).save_pretrained(folder)
    sha = sha256_file(tokenizer / "model.safetensors") if tokenizer else "0" * 64
    # One level: K, h, w at the top of the file too; two: null there (as `vqgen train-prior` writes them).
    flat = (levels[0].codebook_size, levels[0].grid_h, levels[0].grid_w) if len(levels) == 1 else (None,) * 3
    write_prior_meta(folder, PriorMeta(arch, *flat, num_classes, _vocab(levels, num_classes).uncond_token, sha,
                                       codes_meta={}, levels=list(levels)))
    return folder


def _vocab(levels: Sequence[GridLevel], num_classes: int) -> PriorVocab:
    return PriorVocab.of_levels([lv.codebook_size for lv in levels], num_classes)


def tiny_run(root: Path, arch: str = "gpt", num_classes: int = N) -> Path:
    """ROOT as `vqgen pipeline` leaves it once its prior stage finished (no samples, no evaluation):
    ROOT/tokenizer/model (with its training data record), ROOT/prior/model, stages/{tokenizer,prior}.json,
    and a checkpoint beside each model, which no consumer of a run should need."""
    tokenizer = save_tokenizer(root / "tokenizer" / "model")
    write_json(tokenizer / "vqgen_tokenizer.json", {"data": to_dict(DataConfig(image_size=8, channels=1))})
    save_prior(root / "prior" / "model", tokenizer, num_classes, arch)
    for stage in ("tokenizer", "prior"):
        (root / stage / "checkpoints" / "step_00000001").mkdir(parents=True)
        (root / stage / "checkpoints" / "step_00000001" / "optimizer.bin").write_bytes(b"optimizer state")
        write_json(root / "stages" / f"{stage}.json", {"seconds": 0.1})
    return root
