"""Training the tokenizer: a `TrainTask` for `core.loop.fit`, and its run settings.

    train_tokenizer(TokenizerRunConfig(), Path("runs/tok"))   # -> runs/tok/model

The loop owns everything generic (optimizers, schedules, checkpoints, resume, metrics.jsonl); this file
only says how to build the VQ-VAE (and, for VQGAN's loss, its discriminator) from the data, what one
training step computes (stage1_vqvae/losses.py), and how to evaluate: val MSE/PSNR/SSIM, codebook usage
over the whole val set, and a reconstruction grid.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from core.config import check_kwargs, setting, to_dict
from core.data import DataConfig, ImageDataset, load_images
from core.errors import VqgenError
from core.loop import Network, OptimizerSettings, StepInfo, TrainConfig, fit
from core.runs import write_json
from stage1_vqvae.discriminator import PatchDiscriminator, check_patch_grid
from stage1_vqvae.evaluate import (
    save_reconstruction_grid,
    tokenizer_scores,
    top_only_reconstruction,
    whole_rows,
)
from stage1_vqvae.load import TRAINING_FILE
from stage1_vqvae.losses import RECONSTRUCTION, AdversarialConfig, Adversary, LossConfig, VQGANLoss
from stage1_vqvae.model import PRESETS, VQVAE, VQVAEConfig, level_key, merge_settings, moved_keys
from stage1_vqvae.perceptual import build_perceptual, check_network, find_vgg16_weights

logger = logging.getLogger(__name__)

PREVIEW_IMAGES, PREVIEW_COLS = 32, 8  # val images shown (original above reconstruction) in recon_step_N.png
FROM_DATA = ("in_channels", "image_size")  # model fields the data decides
DISCRIMINATOR = "discriminator"  # its name in checkpoints (discriminator.safetensors) and metrics


def tokenizer_train_defaults() -> TrainConfig:
    # Tuned so the Fashion-MNIST default reaches >= 95% val codebook usage in a few CPU minutes
    # (bench/tokenizer.py); lr 1e-3 is safe here because the EMA codebook takes no gradient.
    return TrainConfig(steps=600, batch_size=64, lr=1e-3, warmup_steps=30, eval_every=600, save_every=200,
                       log_every=20)


@dataclass
class TokenizerRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = setting("small", "tokenizer size (stage1_vqvae.model.PRESETS)", choices=tuple(PRESETS))
    model: dict = setting({}, "VQVAEConfig overrides on top of the preset")
    loss: LossConfig = field(default_factory=LossConfig)
    recon_loss: str | None = setting(None, "old name of loss.reconstruction, read into it", choices=RECONSTRUCTION)
    train: TrainConfig = field(default_factory=tokenizer_train_defaults)

    def __post_init__(self):
        # Configs written before `loss:` existed keep working: recon_loss becomes loss.reconstruction.
        if self.recon_loss is None:
            return
        if self.recon_loss not in RECONSTRUCTION:
            raise VqgenError(f"tokenizer config: recon_loss='{self.recon_loss}' is unknown; use mse or l1 "
                             "(recon_loss is the old name of loss.reconstruction)")
        logger.info("tokenizer config: recon_loss=%s read as loss.reconstruction", self.recon_loss)
        self.loss = dataclasses.replace(self.loss, reconstruction=self.recon_loss)
        self.recon_loss = None


def model_settings(cfg: TokenizerRunConfig) -> dict:
    """The VQVAEConfig keywords of the preset and the `model:` overrides, checked before any data is read."""
    if cfg.preset not in PRESETS:
        raise VqgenError(f"tokenizer config: preset '{cfg.preset}' is unknown; use one of {', '.join(PRESETS)}")
    moved_keys(cfg.model, source="tokenizer config 'model' section")
    check_kwargs(VQVAEConfig, cfg.model, source="tokenizer config 'model' section")
    for key in FROM_DATA:
        if key in cfg.model:
            raise VqgenError(f"tokenizer config: model.{key} comes from the data; set data.image_size/data.channels")
    kwargs = merge_settings(PRESETS[cfg.preset], cfg.model)
    # Builds the config to check every model setting now, at the largest factor's size (which suits all).
    factor = VQVAEConfig(**kwargs, image_size=2 ** 10).image_factor
    if cfg.data.image_size % factor:
        fewer = "fewer model.channel_mult entries" + (", a smaller model.top_factor or model.levels=1"
                                                       if kwargs.get("levels", 1) == 2 else "")
        raise VqgenError(
            f"tokenizer config: data.image_size={cfg.data.image_size} is not a multiple of the tokenizer's "
            f"downsampling factor {factor}; use a multiple of {factor} or {fewer}"
        )
    return kwargs


def build_model_config(settings: dict, data: DataConfig, channels: int) -> VQVAEConfig:
    return VQVAEConfig(**settings, in_channels=channels, image_size=data.image_size)  # its errors name the key


def check_loss_settings(cfg: TokenizerRunConfig) -> None:
    """The loss settings a run would trip on later, refused in one line before any data is read: an
    unknown or Inception perceptual backbone, missing LPIPS weights, a discriminator too deep for the images."""
    check_network(cfg.loss.perceptual_network)
    if cfg.loss.perceptual_weight > 0:
        find_vgg16_weights(cfg.loss.perceptual_weights)
    if cfg.loss.adversarial.enabled:
        check_patch_grid(cfg.data.image_size, cfg.loss.adversarial.discriminator_layers,
                         "tokenizer.loss.adversarial.discriminator_layers")


def build_adversary(adv: AdversarialConfig, channels: int) -> Adversary:
    discriminator = PatchDiscriminator(channels, adv.discriminator_channels, adv.discriminator_layers)
    return Adversary(discriminator, adv.lecam_decay)


def discriminator_optimizer(adv: AdversarialConfig) -> OptimizerSettings:
    return OptimizerSettings(adv.lr, adv.betas, adv.weight_decay, adv.warmup_steps, adv.min_lr_ratio)


class TokenizerTask:
    """The VQ-VAE on one image data set, as `core.loop.fit` wants it (the MultiNetworkTask protocol:
    with VQGAN's adversarial loss, the discriminator trains beside it by an optimizer of its own)."""

    def __init__(self, cfg: TokenizerRunConfig):
        self.cfg = cfg
        settings = model_settings(cfg)
        check_loss_settings(cfg)
        perceptual = build_perceptual(cfg.loss.perceptual_weights) if cfg.loss.perceptual_weight > 0 else None
        self.train_set: ImageDataset = load_images(cfg.data, "train")
        self.val_set: ImageDataset = load_images(cfg.data, "val")
        self.model = VQVAE(build_model_config(settings, cfg.data, self.train_set.channels))
        # Built after the tokenizer, so the tokenizer's initial weights are those of a run without it.
        adv = cfg.loss.adversarial
        adversary = build_adversary(adv, self.train_set.channels) if adv.enabled else None
        self.networks = ([Network(DISCRIMINATOR, adversary, discriminator_optimizer(adv), "d_loss")]
                         if adversary is not None else [])
        self.loss = VQGANLoss(cfg.loss, perceptual, adversary)
        self.run_config = to_dict(cfg)
        self.last_eval: dict[str, float] = {}

    def training_step(self, model: torch.nn.Module, batch: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        images = batch["image"]
        output = model(images)
        # The decoder's last layer, where VQGAN eq. 7 weighs the adversarial term (the same parameter
        # as in the prepared model, which may be wrapped).
        loss = self.loss.generator(images, output, info.step, self.model.decoder.conv_out.weight)
        extra = {level_key(level, name): value.detach() for level, q in output.levels.items()
                 for name, value in (("usage", 100.0 * q.usage), ("perplexity", q.perplexity))}
        metrics = loss.log() | extra | {"loss": loss.loss}
        if self.loss.adversarial_at(info.step):
            judged = self.loss.discriminator(images, output.reconstruction, info.networks[DISCRIMINATOR])
            metrics |= judged.log() | {"d_loss": judged.d_loss}
        return metrics

    def evaluate(self, model: torch.nn.Module, loader, accelerator: Accelerator) -> dict[str, float]:
        """Whole-set metrics (stage1_vqvae.evaluate.tokenizer_scores: MSE, PSNR, SSIM, code usage %
        and perplexity) over every val image, gathered from all processes."""
        scores = tokenizer_scores(model, (batch["image"] for batch in loader), accelerator.gather_for_metrics)
        self.last_eval = {f"val/{name}": value for name, value in scores.items() if name != "n_images"}
        return self.last_eval

    def after_evaluate(self, model: torch.nn.Module, step: int, out_dir: Path,
                       accelerator: Accelerator) -> dict[str, Path]:
        """OUT/recon_step_N.png: rows of 8 val images, each row followed by its reconstruction (two levels:
        then by the reconstruction from the top codes alone, `top_only_reconstruction`); also shown by the
        trackers of train.log_with, as val/reconstruction."""
        count = whole_rows(min(PREVIEW_IMAGES, len(self.val_set)), PREVIEW_COLS)
        images = torch.stack([self.val_set[i]["image"] for i in range(count)]).to(accelerator.device)
        versions = [model(images).reconstruction]
        if self.model.config.levels == 2:
            versions.append(top_only_reconstruction(accelerator.unwrap_model(model), images))
        path = out_dir / f"recon_step_{step}.png"
        save_reconstruction_grid(images * 0.5 + 0.5, [v * 0.5 + 0.5 for v in versions], path, PREVIEW_COLS,
                                 layout="rows")
        return {"val/reconstruction": path}

    def save_extras(self, model_dir: Path) -> None:
        """vqgen_tokenizer.json: the data it was trained on (read back by `load.training_data`), the
        unreadable images data.skip_bad dropped per split, and its last val metrics."""
        skipped = {"train": self.train_set.skipped, "val": self.val_set.skipped}
        write_json(model_dir / TRAINING_FILE, {"data": to_dict(self.cfg.data), "skipped": skipped, "val": self.last_eval})


def train_tokenizer(cfg: TokenizerRunConfig, out: Path, resume: bool = False) -> Path:
    """Train a tokenizer into the run folder `out`; returns out/model (config.json + model.safetensors)."""
    # Seed before building the model so train.seed decides its initial weights too.
    set_seed(cfg.train.seed)
    return fit(TokenizerTask(cfg), cfg.train, Path(out), resume=resume)
