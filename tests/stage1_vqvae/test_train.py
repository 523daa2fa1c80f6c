import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image
from safetensors.torch import load_file

from core.data import DataConfig
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from stage1_vqvae.load import load_tokenizer, training_data
from stage1_vqvae.train import TokenizerRunConfig, TokenizerTask, train_tokenizer

sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import KillAtCall, Killed  # noqa: E402

TRAIN = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup_steps=2, eval_every=3, save_every=2, log_every=1)


def config(**changes) -> TokenizerRunConfig:
    base = dict(data=DataConfig(image_size=16, max_images=64), preset="tiny", model={"quantizer": {"codebook_size": 32}},
                train=TRAIN)
    return TokenizerRunConfig(**{**base, **changes})


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


class KilledTask(KillAtCall, TokenizerTask):
    pass


def test_training_writes_model_metrics_and_previews(tmp_path, fmnist_available):
    model_dir = train_tokenizer(config(), tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert model_dir == tmp_path / "model" and tokenizer.config.codebook_size == 32
    assert tokenizer.config.image_size == 16 and tokenizer.config.in_channels == 1
    rows = records(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert {"train/mse", "train/psnr", "train/usage", "train/perplexity", "train/commitment"} <= set(train_rows[0])
    val = [r for r in rows if "val/usage" in r]
    assert [r["step"] for r in val] == [3, 6]
    assert 0 < val[-1]["val/usage"] <= 100 and 1 <= val[-1]["val/perplexity"] <= 32
    assert -1 <= val[-1]["val/ssim"] <= 1 and val[-1]["val/psnr"] > 0
    assert (tmp_path / "recon_step_3.png").is_file() and (tmp_path / "recon_step_6.png").is_file()
    extras = json.loads((model_dir / "vqgen_tokenizer.json").read_text())
    assert extras["val"]["val/usage"] == val[-1]["val/usage"] and extras["skipped"] == {"train": 0, "val": 0}
    assert training_data(tmp_path) == config().data


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, fmnist_available):
    script = Path(__file__).parent / "bf16_tokenizer_script.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "bf16")], env=env, check=True, timeout=120)
    train_tokenizer(config(train=dataclasses.replace(TRAIN, steps=3, eval_every=3, save_every=3)), tmp_path / "fp32")
    bf16, fp32 = ([r["train/loss"] for r in records(tmp_path / run) if "train/loss" in r] for run in ("bf16", "fp32"))
    assert len(bf16) == 3 and all(math.isfinite(x) for x in bf16)
    assert bf16 != fp32, "autocast did not change anything"
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)
    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")  # autocast keeps weights float32
    assert all(t.dtype != torch.bfloat16 for t in weights.values())
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_killed_then_resumed_run_equals_an_uninterrupted_one(tmp_path, fmnist_available):
    whole = train_tokenizer(config(), tmp_path / "whole")
    set_seed(TRAIN.seed)  # as train_tokenizer does
    with pytest.raises(Killed):
        fit(KilledTask(config(), kill_at_call=5), TRAIN, tmp_path / "split")  # last checkpoint: step 4
    resumed = train_tokenizer(config(), tmp_path / "split", resume=True)
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    assert records(tmp_path / "split") == records(tmp_path / "whole")


def test_image_size_must_be_a_multiple_of_the_factor(tmp_path, fmnist_available):
    with pytest.raises(VqgenError, match=r"data.image_size=18 is not a multiple .* factor 4"):
        train_tokenizer(config(data=DataConfig(image_size=18, max_images=16), model={"channel_mult": [1, 1, 2]}),
                        tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"preset": "huge"}, "preset 'huge' is unknown"),
        ({"model": {"codebok_size": 8}}, "codebok_size"),
        ({"model": {"image_size": 32}}, "model.image_size comes from the data"),
        ({"model": {"quantizer": {"beta": -1.0}}}, "beta"),
        ({"recon_loss": "huber"}, "recon_loss"),
    ],
)
def test_bad_settings_are_one_line_user_errors(tmp_path, fmnist_available, changes, message):
    with pytest.raises(VqgenError, match=message) as err:
        TokenizerTask(config(**changes))
    assert "\n" not in str(err.value)


def as_saved(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> (N, H, W) uint8, the levels torchvision's save_image stores."""
    return (images[:, 0] * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("val_images, rows", [(64, 4), (12, 1), (5, 1)])  # 32 shown; 12 -> 8; fewer than 8: all
def test_preview_rows_of_originals_each_followed_by_their_reconstructions(tmp_path, fmnist_available, val_images,
                                                                          rows):
    task = TokenizerTask(config(data=DataConfig(image_size=16, max_images=val_images)))
    model = task.model.eval()
    task.after_evaluate(model, 3, tmp_path, Accelerator(cpu=True))
    grid = np.asarray(Image.open(tmp_path / "recon_step_3.png"))[..., 0]
    cols = min(8, val_images)
    images = torch.stack([task.val_set[i]["image"] for i in range(rows * cols)])
    with torch.no_grad():
        originals, recons = as_saved(images), as_saved(model(images).reconstruction)
    assert grid.shape == (2 * rows * 17 + 1, cols * 17 + 1)  # 16 px tiles, 1 px padding
    tile = lambda row, col: grid[1 + 17 * row : 17 * (row + 1), 1 + 17 * col : 17 * (col + 1)]  # noqa: E731
    for i in range(rows * cols):
        row, col = divmod(i, cols)
        assert np.array_equal(tile(2 * row, col), originals[i])
        assert np.array_equal(tile(2 * row + 1, col), recons[i])
