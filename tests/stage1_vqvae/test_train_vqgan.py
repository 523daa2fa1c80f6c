"""The tokenizer trained with VQGAN's loss: a discriminator beside it from `adversarial.start` on, its
metrics, its checkpoints, exact resume before and after the start, and 1 vs 2 processes."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from core.data import DataConfig
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from stage1_vqvae.load import load_tokenizer
from stage1_vqvae.losses import AdversarialConfig, LossConfig
from stage1_vqvae.train import TokenizerRunConfig, TokenizerTask, train_tokenizer

sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import Killed  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_train import KilledTask, records  # noqa: E402  (the plain tokenizer's, for the same checks)

# Checkpoints at steps 2, 4 and 6; the discriminator starts at step index 3 (logged as step 4).
TRAIN = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup_steps=2, eval_every=6, save_every=2, log_every=1,
                    keep_checkpoints=3)
ADVERSARIAL = AdversarialConfig(weight=0.5, start=3, feature_matching_weight=1.0, lecam_weight=0.1,
                                discriminator_channels=8, discriminator_layers=2, lr=2e-4)
GAN_METRICS = {"train/g_loss", "train/d_loss", "train/logits_real", "train/logits_fake", "train/adaptive_weight",
               "train/feature_matching", "train/lecam", "train/discriminator_grad_norm"}


def vqgan_config(**loss) -> TokenizerRunConfig:
    # No k-means init and no restarts: the codebook then evolves the same under 1 and 2 processes.
    model = {"quantizer": {"codebook_size": 32, "kmeans_init": False, "restart_after_steps": 0}}
    return TokenizerRunConfig(data=DataConfig(image_size=16, max_images=64), preset="tiny", model=model,
                              loss=LossConfig(**{"adversarial": ADVERSARIAL, **loss}), train=TRAIN)


def test_the_discriminator_trains_from_its_start_and_stays_out_of_the_model(tmp_path, fmnist_available):
    model_dir = train_tokenizer(vqgan_config(), tmp_path)
    train_rows = [r for r in records(tmp_path) if "train/loss" in r]
    assert all(not GAN_METRICS & set(r) for r in train_rows if r["step"] <= 3)
    assert all(GAN_METRICS <= set(r) for r in train_rows if r["step"] > 3)
    assert all(r["train/adaptive_weight"] >= 0 for r in train_rows if r["step"] > 3)
    assert [r["discriminator_lr"] for r in train_rows] == [2e-4] * 6  # its own lr, constant by default
    # Untouched before its start (checkpoint of step 2), trained after it (step 6).
    before, after = (load_file(tmp_path / "checkpoints" / f"step_0000000{s}" / "discriminator.safetensors")
                     for s in (2, 6))
    assert not all(torch.equal(before[k], after[k]) for k in before)
    assert {"ema_real", "ema_fake"} <= {k.rsplit(".", 1)[-1] for k in after}  # LeCam's anchors resume too
    assert {f.name for f in model_dir.iterdir()} >= {"config.json", "model.safetensors"}
    assert not any("discriminator" in f.name for f in model_dir.iterdir())
    load_tokenizer(tmp_path)  # the saved tokenizer is the tokenizer alone


# Killed in step 3 (resumed from step 2, before the start) or in step 5 (from step 4, after it).
@pytest.mark.parametrize("kill_step", [3, 5])
def test_killed_then_resumed_equals_uninterrupted_before_and_after_the_start(tmp_path, fmnist_available, kill_step):
    whole = train_tokenizer(vqgan_config(), tmp_path / "whole")
    set_seed(TRAIN.seed)  # as train_tokenizer does
    with pytest.raises(Killed):
        fit(KilledTask(vqgan_config(), kill_at_call=kill_step), TRAIN, tmp_path / "split")
    resumed = train_tokenizer(vqgan_config(), tmp_path / "split", resume=True)
    for name in ("model.safetensors",):
        expected, got = load_file(whole / name), load_file(resumed / name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    last = [tmp_path / run / "checkpoints" / "step_00000006" for run in ("whole", "split")]
    for name in ("discriminator.safetensors", "discriminator.optimizer.safetensors", "optimizer.safetensors"):
        expected, got = (load_file(folder / name) for folder in last)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name
    assert records(tmp_path / "split") == records(tmp_path / "whole")


def test_old_recon_loss_setting_is_read_as_loss_reconstruction():
    cfg = TokenizerRunConfig(recon_loss="l1")
    assert cfg.loss.reconstruction == "l1" and cfg.recon_loss is None
    with pytest.raises(VqgenError, match="old name of loss.reconstruction"):
        TokenizerRunConfig(recon_loss="huber")


@pytest.mark.parametrize(
    "loss, message",
    [
        ({"perceptual_network": "inception"}, "perceptual_network=inception: the Inception network that scores FID"),
        ({"perceptual_weight": 1.0}, "tokenizer.loss.perceptual_weight > 0 needs LPIPS's ImageNet VGG16 weights"),
        ({"adversarial": dataclasses.replace(ADVERSARIAL, discriminator_layers=4)},
         "discriminator_layers=4 halves data.image_size=16 until no patch is left; use at most 2"),
    ],
)
def test_loss_settings_are_refused_in_one_line_before_any_data_is_read(tmp_path, monkeypatch, loss, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.delenv("VQGEN_LPIPS_WEIGHTS", raising=False)
    cfg = dataclasses.replace(vqgan_config(**loss), data=DataConfig(spec=f"folder:{tmp_path / 'absent'}", image_size=16))
    with pytest.raises(VqgenError, match=message) as refused:
        TokenizerTask(cfg)
    assert "\n" not in str(refused.value)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path, cpu_launch, fmnist_available):
    """The adaptive weight and LeCam's anchors are batch statistics: taken over both processes' halves,
    they are the one-process numbers, and so is everything trained with them. Compared through the
    losses, not the weights: Adam turns rounding differences in a near-zero gradient into steps of
    the order of lr (1e-3 here) in the plain tokenizer already."""
    script = Path(__file__).parent / "vqgan_tokenizer_script.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, timeout=300)
    two = subprocess.run([*cpu_launch(2), str(script), str(tmp_path / "two")], env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0
    rows_one, rows_two = ([r for r in records(tmp_path / run) if "train/loss" in r] for run in ("one", "two"))
    assert [r.keys() for r in rows_one] == [r.keys() for r in rows_two]
    for key in sorted(GAN_METRICS | {"train/loss"}):
        one_values, two_values = ([r[key] for r in rows if key in r] for rows in (rows_one, rows_two))
        assert one_values == pytest.approx(two_values, rel=1e-4, abs=1e-6), key
