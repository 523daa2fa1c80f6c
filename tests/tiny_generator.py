"""Tiny saved generators (a tokenizer folder and a prior folder) for tests of sampling and its users.

Import it as tests import killing.py:
    sys.path.insert(0, str(Path(__file__).parents[1]))   # the tests/ folder
    from tiny_generator import GRID, K, N, save_prior, save_tokenizer  # noqa: E402
(`from tests.tiny_generator import ...` works too when pytest runs as `python -m pytest` from the root.)

The tokenizer turns 8x8 one-channel images into 4x4 grids of K=16 codes; the prior has N=3 classes.
Seeds are fixed, so two calls write the same weights. `tiny_run` lays both out as a pipeline run.
"""

from pathlib import Path

import torch

from core.config import to_dict
from core.data import DataConfig
from core.runs import sha256_file, write_json
from stage1_vqvae.model import VQVAE, VQVAEConfig
from stage2_prior.gpt import build_gpt
from stage2_prior.load import PriorMeta, write_prior_meta
from stage2_prior.maskgit import build_maskgit
from stage2_prior.pixelcnn import build_pixelcnn

K, N, GRID = 16, 3, 4


def save_tokenizer(folder: Path, codebook_size: int = K, image_size: int = 8) -> Path:
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=image_size, base_channels=8, channel_mult=(1, 2), code_dim=8,
                         codebook_size=codebook_size)
    VQVAE(config).save_pretrained(folder)
    return folder


def save_prior(folder: Path, tokenizer: Path, num_classes: int = N, arch: str = "gpt") -> Path:
    """A prior of `arch` (gpt | maskgit | pixelcnn) over `tokenizer`'s codes, with its prior_meta."""
    torch.manual_seed(1)
    if arch == "gpt":
        model = build_gpt("demo", K, num_classes, GRID, GRID, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4)
    elif arch == "maskgit":
        model = build_maskgit("demo", K, num_classes, GRID, GRID, hidden_size=32, intermediate_size=48,
                              num_hidden_layers=2, num_attention_heads=4)
    else:
        model = build_pixelcnn("demo", K, num_classes, GRID, GRID, hidden_size=16, num_layers=2, head_size=16)
    model.save_pretrained(folder)
    meta = PriorMeta(arch, K, GRID, GRID, num_classes, K + num_classes,
                     sha256_file(tokenizer / "model.safetensors"), codes_meta={})
    write_prior_meta(folder, meta)
    return folder


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
