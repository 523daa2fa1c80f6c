import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from vqgen.errors import VqgenError
from vqgen.loop import TrainConfig, fit
from vqgen.loop.optim import param_groups, warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import Killed  # noqa: E402
from run_tiny_fit import CFG as CFG_TINY_FIT  # noqa: E402
from run_tiny_fit import ScriptTask  # noqa: E402
from tiny_task import CFG, TinyModel, TinyTask  # noqa: E402
from tiny_task import saved_weights as _weights  # noqa: E402


def _train_losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"], r.get("train/noise")) for r in rows if "train/loss" in r]


def _all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_fit_writes_model_metrics_and_checkpoints(tmp_path):
    model_dir = fit(TinyTask(), CFG, tmp_path)
    assert (model_dir / "config.json").is_file() and (model_dir / "extra.json").is_file()
    reloaded = TinyModel.from_pretrained(model_dir)
    assert set(_weights(model_dir)) == set(reloaded.state_dict())
    losses = _train_losses(tmp_path)
    assert [s for s, _, _ in losses] == list(range(1, 13))
    assert losses[-1][1] < losses[0][1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000008", "step_00000012"]
    assert (tmp_path / "eval_12.txt").exists()


# n=88 in micro-batches of 8: 11 per epoch, so with grad_accum=2 an epoch ends inside an optimizer step.
@pytest.mark.parametrize("grad_accum,ema,n", [(1, 0.0, 96), (2, 0.9, 96), (2, 0.0, 88)])
def test_resume_is_exact(tmp_path, grad_accum, ema, n):
    cfg = TrainConfig(**{**CFG.__dict__, "grad_accum": grad_accum, "ema_decay": ema})
    whole = fit(TinyTask(n=n), cfg, tmp_path / "whole")
    # Killed in the middle of step 10 (micro-batch calls count grad_accum per step); the last checkpoint is 8.
    with pytest.raises(Killed):
        fit(TinyTask(n=n, kill_at_call=10 * grad_accum), cfg, tmp_path / "split")
    resumed = fit(TinyTask(n=n), cfg, tmp_path / "split", resume=True)
    for name, tensor in _weights(whole).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name
    assert _train_losses(tmp_path / "whole") == _train_losses(tmp_path / "split")


def test_existing_run_needs_resume(tmp_path):
    fit(TinyTask(), TrainConfig(**{**CFG.__dict__, "steps": 4}), tmp_path)
    with pytest.raises(VqgenError, match="--resume"):
        fit(TinyTask(), CFG, tmp_path)


def test_resume_with_other_model_settings_is_refused(tmp_path):
    fit(TinyTask(), TrainConfig(**{**CFG.__dict__, "steps": 4}), tmp_path)
    task = TinyTask()
    task.run_config = {"model": {"dim": 8}}
    with pytest.raises(VqgenError, match="model"):
        fit(task, CFG, tmp_path, resume=True)


class Recorder(TinyTask):
    """Notes which loader Accelerate holds as the active one after each evaluation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.active_after_eval = []

    def evaluate(self, model, loader, accelerator):
        results = super().evaluate(model, loader, accelerator)
        self.active_after_eval.append(accelerator.gradient_state.active_dataloader)
        return results


def test_updates_every_grad_accum_micro_batches_across_epochs(tmp_path):
    task = Recorder(n=88)  # 11 micro-batches of 8 per epoch: epoch ends at micro-batches 11 and 22
    updates = []  # the micro-batch count at each real optimizer update
    handle = register_optimizer_step_post_hook(lambda *_: updates.append(task.calls))
    try:
        fit(task, dataclasses.replace(CFG, grad_accum=2, eval_batches=1), tmp_path)
    finally:
        handle.remove()
    assert updates == list(range(2, 25, 2))
    # A val pass cut short by eval_batches must not stay registered: training's loader is active again.
    assert [len(active.dataset) for active in task.active_after_eval] == [88, 88, 88]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(VqgenError, match="NaN") as stopped:
        fit(TinyTask(nan_at_step=6), CFG, tmp_path)
    assert f"the last good checkpoint, {tmp_path / 'checkpoints' / 'step_00000004'}, is intact" in str(stopped.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000004"]
    assert _all_finite(_weights(tmp_path / "checkpoints" / "step_00000004"))
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_infinite_gradient_stops_before_the_update(tmp_path, grad_clip):
    """A finite loss with an infinite gradient on a save step: no update, no checkpoint of NaN weights."""
    cfg = dataclasses.replace(CFG, grad_clip=grad_clip)
    with pytest.raises(VqgenError, match="gradient became NaN or infinite"):
        fit(TinyTask(inf_grad_at_step=8), cfg, tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000004"]
    assert _all_finite(_weights(tmp_path / "checkpoints" / "step_00000004"))
    assert _all_finite(_weights(fit(TinyTask(), cfg, tmp_path, resume=True)))  # the checkpoint resumes


def test_non_finite_weights_are_never_saved(tmp_path):
    # Weights that overflow in an update (a learning rate far too high) are caught before the first save.
    def overflow(optimizer, *_):
        optimizer.param_groups[0]["params"][0].data.fill_(math.inf)

    handle = register_optimizer_step_post_hook(overflow)
    try:
        with pytest.raises(VqgenError, match="weights became NaN or infinite") as stopped:
            fit(TinyTask(), dataclasses.replace(CFG, save_every=1), tmp_path)
    finally:
        handle.remove()
    assert not list((tmp_path / "checkpoints").glob("*"))
    # The message must not promise a checkpoint that does not exist.
    assert "no checkpoint was saved yet" in str(stopped.value) and "intact" not in str(stopped.value)


def test_clipping_caps_the_gradient_the_optimizer_sees(tmp_path):
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, *_: seen.append(float(torch.nn.utils.get_total_norm(
            [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])))
    )
    try:
        fit(TinyTask(), dataclasses.replace(CFG, steps=4, grad_clip=1e-3), tmp_path)
    finally:
        handle.remove()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/grad_norm"] > 1e-2 for r in logged if "train/grad_norm" in r)  # logged before clipping
    assert len(seen) == 4 and max(seen) <= 1e-3 * (1 + 1e-4)


def test_bf16_smoke(tmp_path):
    """mixed_precision=bf16 on the CPU (its own process: Accelerate fixes one precision per process)."""
    script = Path(__file__).parent / "run_tiny_fit.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "bf16"), "bf16"], env=env, check=True, timeout=120)
    fit(ScriptTask(), CFG_TINY_FIT, tmp_path / "fp32")
    bf16, fp32 = ([loss for _, loss, _ in _train_losses(tmp_path / run)] for run in ("bf16", "fp32"))
    assert bf16 != fp32, "autocast did not change anything"
    assert bf16 == pytest.approx(fp32, rel=0.05)
    weights = _weights(tmp_path / "bf16" / "model")
    assert _all_finite(weights) and all(t.dtype == torch.float32 for t in weights.values())


def test_batch_not_divisible_is_a_clear_error(tmp_path):
    with pytest.raises(VqgenError, match="batch_size"):
        fit(TinyTask(), TrainConfig(**{**CFG.__dict__, "grad_accum": 3}), tmp_path)


def test_weight_decay_only_on_matrices():
    decayed, plain = param_groups(TinyTask().model, 0.1)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0


def test_warmup_then_cosine_to_floor():
    f = warmup_cosine(TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1) and f(10) > f(50) > f(99)


# Worked by hand: warmup (step + 1) / warmup_steps, so the first step already trains; then
# min + (1 - min) * (1 + cos(pi * progress)) / 2, progress = (step - warmup) / (steps - warmup), held at the floor.
SCHEDULES = {
    "warmup 10 of 100, floor 0.1": ((100, 10, 0.1), {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 55: 0.55, 100: 0.1, 150: 0.1}),
    "no warmup, floor 0": ((20, 0, 0.0), {0: 1.0, 5: (1 + math.sqrt(0.5)) / 2, 10: 0.5, 20: 0.0, 25: 0.0}),
    "warmup past the end": ((5, 8, 0.5), {0: 0.125, 4: 0.625, 7: 1.0, 8: 1.0, 9: 0.5}),
}


@pytest.mark.parametrize("settings,expected", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_schedule_multipliers_are_pinned(settings, expected):
    steps, warmup_steps, min_lr_ratio = settings
    f = warmup_cosine(TrainConfig(steps=steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio))
    assert {step: f(step) for step in expected} == pytest.approx(expected, abs=1e-12, rel=0)


def test_a_learning_rate_too_large_for_adamw_is_one_line(tmp_path):
    """1e39 overflows float32 inside AdamW's update: refused by the range check before any work."""
    with pytest.raises(VqgenError, match=r"^train\.lr must be in \(0, 10\], got 1e\+39") as refused:
        fit(TinyTask(), dataclasses.replace(CFG, lr=1e39), tmp_path / "run")
    assert "\n" not in str(refused.value) and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path, cpu_launch):
    script = Path(__file__).parent / "run_tiny_fit.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, timeout=180)
    two = subprocess.run([*cpu_launch(2), str(script), str(tmp_path / "two")], env=env, timeout=180)
    assert one.returncode == 0 and two.returncode == 0
    losses_one = [loss for _, loss, _ in _train_losses(tmp_path / "one")]
    losses_two = [loss for _, loss, _ in _train_losses(tmp_path / "two")]
    assert losses_one == pytest.approx(losses_two, rel=1e-5)
    for name, tensor in _weights(tmp_path / "one" / "model").items():
        torch.testing.assert_close(tensor, _weights(tmp_path / "two" / "model")[name], rtol=1e-5, atol=1e-6)
