import math

import pytest
import scipy.stats
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from core.data import DataConfig
from eval.recon import tokenizer_metrics
from stage1_vqvae.train import TokenizerRunConfig, TokenizerTask


@pytest.fixture
def task(fmnist_available):
    torch.manual_seed(0)
    cfg = TokenizerRunConfig(data=DataConfig(image_size=16, max_images=20), preset="tiny", model={"quantizer": {"codebook_size": 32}})
    task = TokenizerTask(cfg)
    task.model.eval()
    return task


def by_hand(task: TokenizerTask) -> dict[str, float]:
    """The val metrics from every val image at once: per-image MSE ([-1, 1]) and PSNR ([0, 1], peak 1),
    the share of the K codes used, and exp(entropy) of the code histogram."""
    images = torch.stack([task.val_set[i]["image"] for i in range(len(task.val_set))])
    with torch.no_grad():
        output = task.model(images)
    mse = (output.reconstruction - images).square().flatten(1).mean(1)
    counts = torch.bincount(output.codes.flatten(), minlength=32)
    return {"mse": float(mse.mean()), "psnr": float((10 * torch.log10(4 / mse)).mean()),
            "usage": 100 * int((counts > 0).sum()) / 32, "perplexity": math.exp(scipy.stats.entropy(counts.numpy()))}


def test_training_evaluation_measures_the_whole_val_split(task):
    # batches of 8 over 20 images: the last batch is short, and every image counts once.
    got = task.evaluate(task.model, DataLoader(task.val_set, batch_size=8), Accelerator(cpu=True))
    for name, value in by_hand(task).items():
        assert got[f"val/{name}"] == pytest.approx(value, rel=1e-5), name
    assert -1 <= got["val/ssim"] <= 1


def test_reconstruct_reports_the_numbers_training_does(task):
    val = task.evaluate(task.model, DataLoader(task.val_set, batch_size=8), Accelerator(cpu=True))
    got = tokenizer_metrics(task.model, task.cfg.data, batch_size=8)
    assert got["n_images"] == len(task.val_set) and got["split"] == "val"
    for name in ("psnr", "ssim", "usage", "perplexity"):
        assert got[name] == pytest.approx(val[f"val/{name}"], rel=1e-5), name
