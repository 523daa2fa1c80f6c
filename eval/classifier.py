"""A small CNN classifier for data sets far from ImageNet (Fashion-MNIST, MNIST).

Inception features of 28x28 grey clothes upscaled to 299 px say little; a classifier trained on
the data set itself gives "classifier FID" (the Frechet distance of its penultimate features) and a
"classifier IS" (the Inception Score formula on its softmax), as used for MNIST-like data since
Salimans et al. (2016, Sec. 4) and Binkowski et al. (2018, Sec. 5). These numbers are comparable only
with numbers from the same classifier file, never with Inception FID/IS; reports label them
"classifier FID (<data> CNN)".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from einops import rearrange
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from core.config import setting, to_dict
from core.data import DataConfig, load_images
from core.errors import VqgenError
from core.loop import TrainConfig, fit
from core.model_config import check_settings
from core.model_folder import load_model, model_folder
from core.runs import write_json

logger = logging.getLogger(__name__)

MODEL_TYPE = "vqgen_classifier"
FIX = "train one with `vqgen train-classifier`"
POOLED = 4  # side of the pooled feature map, whatever the image size


@strict  # a dataclass with checks on construction, as transformers' own configs are (core/model_config.py)
class ClassifierConfig(PreTrainedConfig):
    """Conv stages (conv-BN-ReLU-maxpool, each halves the image), a 4x4 average pool, a `feature_dim`
    layer, the class head. One conv per stage keeps training to ~1-2 CPU minutes."""

    model_type = MODEL_TYPE

    in_channels: int = setting(1, "image channels: 1 for grey, 3 for colour images", ge=1)
    num_classes: int = setting(10, "N, the classes of the data set", ge=2)
    widths: tuple[int, ...] | list[int] = setting((32, 64, 128), "channels of each conv stage (each halves the image)",
                                                  ge=1, min_length=1)
    feature_dim: int = setting(128, "width of the feature layer that classifier FID uses", ge=1)
    data_spec: str = setting("", "the data set it was trained on, for the report's labels")

    def __post_init__(self, **kwargs):
        check_settings(self, "classifier")
        super().__post_init__(**kwargs)


@dataclass
class ClassifierOutput(ModelOutput):
    """logits (B, N) and the penultimate features (B, feature_dim) that classifier FID uses."""

    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


class Classifier(PreTrainedModel):
    """images (B, C, H, W) in [-1, 1] -> ClassifierOutput(logits (B, N), features (B, feature_dim))."""

    config_class = ClassifierConfig
    base_model_prefix = "classifier"
    main_input_name = "images"

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        widths = (config.in_channels, *config.widths)
        self.stages = nn.Sequential(*(_stage(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.pool = nn.AdaptiveAvgPool2d(POOLED)
        self.features = nn.Sequential(nn.Linear(widths[-1] * POOLED**2, config.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own default (kaiming uniform, a=sqrt(5)): transformers' N(0, 0.02) starves a small
        # conv net of signal. The guarded `init` functions leave weights from from_pretrained alone.
        if isinstance(module, nn.Conv2d | nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        pooled = rearrange(self.pool(self.stages(images)), "b c h w -> b (c h w)")  # (B, widths[-1] * 16)
        features = self.features(pooled)
        return ClassifierOutput(logits=self.head(features), features=features)


@dataclass
class ClassifierRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    widths: tuple[int, ...] = setting((32, 64, 128), "channels of each conv stage (each halves the image)",
                                      ge=1, min_length=1)
    feature_dim: int = setting(128, "width of the feature layer that classifier FID uses", ge=1)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=400, batch_size=128, lr=3e-3, warmup_steps=20,
                                            weight_decay=1e-4, eval_every=400, save_every=400, log_every=25)
    )


class ClassifierTask:
    """Cross-entropy on labelled images, as `core.loop.fit` wants it (the TrainTask protocol)."""

    def __init__(self, cfg: ClassifierRunConfig):
        self.cfg = cfg
        self.train_set = load_images(cfg.data, "train")
        self.val_set = load_images(cfg.data, "test")
        if self.train_set.num_classes < 2:
            raise VqgenError(f"data '{cfg.data.spec}': has no class labels; the classifier needs a labelled data set")
        config = ClassifierConfig(in_channels=self.train_set.channels, num_classes=self.train_set.num_classes,
                                  widths=cfg.widths, feature_dim=cfg.feature_dim, data_spec=cfg.data.spec)
        self.model = Classifier(config)
        self.run_config = to_dict(cfg)
        self.last_eval: dict[str, float] = {}

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).logits
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]), "accuracy": accuracy.detach()}

    def evaluate(self, model: nn.Module, loader, accelerator: Accelerator) -> dict[str, float]:
        """Test-set accuracy over every test image, gathered from all processes."""
        correct = total = 0
        for batch in loader:
            hits = accelerator.gather_for_metrics(model(batch["image"]).logits.argmax(1) == batch["label"])
            correct, total = correct + int(hits.sum()), total + len(hits)
        self.last_eval = {"val/accuracy": correct / max(total, 1)}
        return self.last_eval

    def after_evaluate(self, model: nn.Module, step: int, out_dir: Path, accelerator: Accelerator) -> None:
        return None

    def save_extras(self, model_dir: Path) -> None:
        """vqgen_classifier.json: the data it was trained on and its test accuracy."""
        write_json(model_dir / "vqgen_classifier.json", {"data": to_dict(self.cfg.data), "test": self.last_eval})


def train_classifier(cfg: ClassifierRunConfig, out: str | Path, resume: bool = False) -> Path:
    """`vqgen train-classifier`: train into the run folder `out`; returns out/model."""
    set_seed(cfg.train.seed)  # before the model is built, so the seed decides its initial weights
    return fit(ClassifierTask(cfg), cfg.train, Path(out), resume=resume)


def classifier_folder(path: str | Path) -> Path:
    """The model folder of a classifier given its model folder or its training run folder (RUN/model)."""
    return model_folder(path, "classifier", FIX)


def load_classifier(path: str | Path) -> Classifier:
    """A trained classifier (eval mode) from its model folder or its training run folder."""
    return load_model(Classifier, path, "classifier", (MODEL_TYPE,), FIX)
