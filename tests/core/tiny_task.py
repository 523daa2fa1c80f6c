"""A tiny regression task for exercising core.loop: y = x @ W + noise, with a real PreTrainedModel; and the
same task with a critic trained beside the model from a start step on, as a GAN's discriminator is."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from transformers import PreTrainedConfig, PreTrainedModel

from core.loop import Network, OptimizerSettings, TrainConfig

sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import KillAtCall  # noqa: E402

# Checkpoints at steps 4, 8 and 12.
CFG = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=3, eval_every=4, save_every=4, log_every=1)


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a saved model folder or of a checkpoint."""
    return load_file(folder / "model.safetensors")


class TinyConfig(PreTrainedConfig):
    model_type = "vqgen_test_tiny"

    def __init__(self, dim: int = 4, **kwargs):
        self.dim = dim
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        self.net = torch.nn.Sequential(torch.nn.Linear(config.dim, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Points(Dataset):
    def __init__(self, n: int, dim: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.arange(1.0, dim + 1) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class Regression:
    """The task proper; `calls`, counted by KillAtCall, says when to inject a NaN loss or an infinite gradient."""

    calls: int

    def __init__(self, n: int = 96, nan_at_step: int = -1, inf_grad_at_step: int = -1, dim: int = 4):
        torch.manual_seed(0)
        self.model = TinyModel(TinyConfig(dim))
        self.train_set, self.val_set = Points(n, dim), Points(32, dim, seed=1)
        self.run_config = {"model": {"dim": dim}}
        self.nan_at_step, self.inf_grad_at_step = nan_at_step, inf_grad_at_step

    def training_step(self, model, batch):
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        if self.calls == self.nan_at_step:
            loss = loss * float("nan")
        if self.calls == self.inf_grad_at_step:
            # sqrt at 0: the loss term is exactly 0, its gradient 1 / (2 sqrt(0)) is infinite.
            weight = model.net[0].weight
            loss = loss + torch.sqrt(weight - weight.detach()).sum()
        return {"loss": loss, "noise": torch.rand(())}  # draws from the global RNG: resume must restore it

    def evaluate(self, model, loader, accelerator):
        errors = [accelerator.gather_for_metrics((model(b["x"]) - b["y"]) ** 2) for b in loader]
        return {"val/mse": torch.cat(errors).mean().item()}

    def after_evaluate(self, model, step: int, out_dir: Path, accelerator) -> None:
        (out_dir / f"eval_{step}.txt").write_text("ok")

    def save_extras(self, model_dir: Path) -> None:
        (model_dir / "extra.json").write_text("{}")


class TinyTask(KillAtCall, Regression):
    """`TinyTask(kill_at_call=k)` stops like a SIGKILL in its k-th training_step."""


class Critic(torch.nn.Module):
    """Scores (x, y) pairs: real targets high, the model's predictions low. A plain module: a network
    trained beside the model needs no save_pretrained."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y[:, None]], dim=1)).squeeze(-1)


# Its own lr, betas, decay and schedule: none of them the model's (CFG: lr 1e-2, betas (0.9, 0.95), no decay).
CRITIC_OPTIMIZER = OptimizerSettings(lr=5e-3, betas=(0.5, 0.9), weight_decay=0.1, warmup_steps=2, min_lr_ratio=0.5)


class Adversarial(Regression):
    """The regression with a hinge-loss critic from step `start` on (0-based, as StepInfo.step counts): the
    model then also raises the critic's score of its predictions, through the critic's detached weights."""

    def __init__(self, start: int = 6, critic_nan_at_call: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.critic = Critic(self.model.config.dim)
        self.networks = [Network("critic", self.critic, CRITIC_OPTIMIZER, loss="critic_loss")]
        self.start, self.critic_nan_at_call = start, critic_nan_at_call

    def training_step(self, model, batch, info):
        x, y = batch["x"], batch["y"]
        prediction = model(x)
        result = {"loss": torch.nn.functional.mse_loss(prediction, y), "noise": torch.rand(())}
        if info.step < self.start:
            return result
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        result["loss"] = result["loss"] - 0.1 * torch.func.functional_call(self.critic, frozen, (x, prediction)).mean()
        real, fake = info.networks["critic"](torch.cat([x, x]), torch.cat([y, prediction.detach()])).chunk(2)
        critic_loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        if self.calls == self.critic_nan_at_call:
            critic_loss = critic_loss * float("nan")
        return result | {"critic_loss": critic_loss}


class AdversarialTask(KillAtCall, Adversarial):
    """`AdversarialTask(kill_at_call=k)` stops like a SIGKILL in its k-th training_step."""
