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

from core.errors import VqgenError
from core.loop import TrainConfig, fit
from core.loop.optim import param_groups, scaled_backward, scaled_step, unscale_and_clip, warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import Killed  # noqa: E402
from run_tiny_fit import CFG as CFG_TINY_FIT  # noqa: E402
from run_tiny_fit import ScriptTask  # noqa: E402
from tiny_task import CFG, CRITIC_OPTIMIZER, AdversarialTask, Critic, TinyModel, TinyTask  # noqa: E402
from tiny_task import saved_weights as _weights  # noqa: E402
from tracker_events import assert_scalars_match_metrics_jsonl  # noqa: E402


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


def test_resume_with_the_same_tuple_setting_is_allowed(tmp_path):
    """run_config.json stores a tuple as a list; the same settings must still compare equal on resume."""
    task = TinyTask()
    task.run_config = {"model": {"dim": 4, "betas": (0.5, 0.9)}}
    fit(task, dataclasses.replace(CFG, steps=4), tmp_path)
    resumed = TinyTask()
    resumed.run_config = {"model": {"dim": 4, "betas": (0.5, 0.9)}}
    fit(resumed, CFG, tmp_path, resume=True)


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


def test_a_refused_start_leaves_run_config_json_as_it_was(tmp_path):
    """The batch and the checkpoint to resume from are checked before run_config.json is (re)written."""
    with pytest.raises(VqgenError, match="batch_size"):
        fit(TinyTask(), dataclasses.replace(CFG, grad_accum=3), tmp_path / "new")
    assert not (tmp_path / "new" / "run_config.json").exists()
    task = TinyTask()
    task.run_config = {"train": {"steps": 4}}
    fit(task, dataclasses.replace(CFG, steps=4), tmp_path / "run")
    for folder in (tmp_path / "run" / "checkpoints").iterdir():
        (folder / "model.safetensors").write_bytes(b"torn")
    task.run_config = {"train": {"steps": 12}}
    with pytest.raises(VqgenError, match="no checkpoint"):
        fit(task, CFG, tmp_path / "run", resume=True)
    assert json.loads((tmp_path / "run" / "run_config.json").read_text()) == {"train": {"steps": 4}}


def test_weight_decay_only_on_matrices():
    decayed, plain = param_groups(TinyTask().model, 0.1)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0


def test_warmup_then_cosine_to_floor():
    f = warmup_cosine(TrainConfig(warmup_steps=10, min_lr_ratio=0.1).optimizer(), steps=100)
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
    f = warmup_cosine(TrainConfig(warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio).optimizer(), steps)
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
    two = subprocess.run([*cpu_launch(2), str(script), str(tmp_path / "two"), "--log-with", "tensorboard"], env=env,
                         timeout=180)
    assert one.returncode == 0 and two.returncode == 0
    losses_one = [loss for _, loss, _ in _train_losses(tmp_path / "one")]
    losses_two = [loss for _, loss, _ in _train_losses(tmp_path / "two")]
    assert losses_one == pytest.approx(losses_two, rel=1e-5)
    # The main process alone writes the trackers, the same numbers as metrics.jsonl.
    assert len(list((tmp_path / "two" / "trackers" / "vqgen").glob("events.*"))) == 1
    assert_scalars_match_metrics_jsonl(tmp_path / "two")
    for name, tensor in _weights(tmp_path / "one" / "model").items():
        torch.testing.assert_close(tensor, _weights(tmp_path / "two" / "model")[name], rtol=1e-5, atol=1e-6)


# --- a critic trained beside the model (two networks, two optimizers) ---

def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def test_a_second_network_has_its_own_optimizer_schedule_and_start(tmp_path):
    task = AdversarialTask(start=6)
    initial = {name: p.detach().clone() for name, p in task.critic.state_dict().items()}
    model_dir = fit(task, dataclasses.replace(CFG, keep_checkpoints=3), tmp_path)
    rows = [r for r in _rows(tmp_path) if "train/loss" in r]
    # Its loss and gradient from step index 6 on (logged as step 7: the count after the update).
    assert [r["step"] for r in rows if "train/critic_loss" in r] == list(range(7, 13))
    assert [r["step"] for r in rows if "train/critic_grad_norm" in r] == list(range(7, 13))
    # Each schedule follows the global step with its own settings, the critic's before its start too.
    model_lr, critic_lr = warmup_cosine(CFG.optimizer(), CFG.steps), warmup_cosine(CRITIC_OPTIMIZER, CFG.steps)
    assert [r["lr"] for r in rows] == pytest.approx([CFG.lr * model_lr(s) for s in range(1, 13)])
    assert [r["critic_lr"] for r in rows] == pytest.approx([CRITIC_OPTIMIZER.lr * critic_lr(s) for s in range(1, 13)])
    state = json.loads((_checkpoint(tmp_path, 12) / "state.json").read_text())
    groups = state["networks"]["critic"]["param_groups"]
    assert [g["betas"] for g in groups] == [[0.5, 0.9]] * 2 and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [g["betas"] for g in state["param_groups"]] == [list(CFG.betas)] * 2
    # Not updated before its start (step 4's checkpoint), updated after it (step 8's).
    assert all(torch.equal(initial[k], v) for k, v in _weights_of(_checkpoint(tmp_path, 4), "critic").items())
    assert not all(torch.equal(initial[k], v) for k, v in _weights_of(_checkpoint(tmp_path, 8), "critic").items())
    # save_pretrained writes the model alone; the critic lives in the checkpoints only.
    assert set(_weights(model_dir)) == set(TinyModel.from_pretrained(model_dir).state_dict())
    assert not any("critic" in f.name for f in model_dir.iterdir())
    assert {"critic.safetensors", "critic.optimizer.safetensors"} <= {f.name for f in _checkpoint(tmp_path, 8).iterdir()}


def _weights_of(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / f"{name}.safetensors")


# Checkpoints at 4, 8, 12; the critic starts at step index 6. Killed in step 6 the run resumes from step 4,
# before the start, and crosses it; killed in step 10 it resumes from step 8, after the start.
@pytest.mark.parametrize("kill_step,grad_accum,ema", [(6, 1, 0.0), (10, 1, 0.0), (6, 2, 0.9), (10, 2, 0.9)])
def test_resume_with_two_networks_is_exact_before_and_after_the_start(tmp_path, kill_step, grad_accum, ema):
    cfg = dataclasses.replace(CFG, grad_accum=grad_accum, ema_decay=ema)
    whole = fit(AdversarialTask(start=6), cfg, tmp_path / "whole")
    with pytest.raises(Killed):
        fit(AdversarialTask(start=6, kill_at_call=kill_step * grad_accum), cfg, tmp_path / "split")
    resumed = fit(AdversarialTask(start=6), cfg, tmp_path / "split", resume=True)
    for name, tensor in _weights(whole).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name
    for file in ("critic", "critic.optimizer", "optimizer", "model"):
        expected, got = (_weights_of(_checkpoint(tmp_path / run, 12), file) for run in ("whole", "split"))
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), file
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "split")


def test_a_nan_loss_of_the_second_network_stops_the_run(tmp_path):
    with pytest.raises(VqgenError, match="the loss became NaN or infinite"):
        fit(AdversarialTask(start=2, critic_nan_at_call=7), CFG, tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000004"]
    assert _all_finite(_weights_of(_checkpoint(tmp_path, 4), "critic"))


def test_each_network_is_clipped_on_its_own(tmp_path):
    seen = {}  # the gradient norms each optimizer sees
    handle = register_optimizer_step_pre_hook(lambda optimizer, *_: seen.setdefault(
        id(optimizer), []).append(float(torch.nn.utils.get_total_norm(
            [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]))))
    try:
        fit(AdversarialTask(start=2), dataclasses.replace(CFG, steps=4, grad_clip=1e-3), tmp_path)
    finally:
        handle.remove()
    assert sorted(len(norms) for norms in seen.values()) == [2, 4]  # the critic from step index 2 on
    assert all(norm <= 1e-3 * (1 + 1e-4) for norms in seen.values() for norm in norms)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/critic_grad_norm"] > 1e-2 for r in logged if "train/critic_grad_norm" in r)


def test_each_network_steps_under_its_own_loss_scale():
    """An fp16 overflow in one network's gradients skips that network's step and halves its scale only.
    (Accelerate's one scaler would halve the scale of both, and unscale the second by the changed scale.)"""
    torch.manual_seed(0)
    nets = [Critic(), Critic()]
    optimizers = [torch.optim.AdamW(net.parameters(), lr=0.1) for net in nets]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in nets]
    before = [[p.detach().clone() for p in net.parameters()] for net in nets]
    x, y = torch.randn(4, 4), torch.randn(4)
    for net, scaler, overflow in zip(nets, scalers, (False, True)):
        loss = net(x, y).mean() * (1e38 if overflow else 1.0)  # scaled by 2**10 it overflows float32
        scaled_backward(loss, scaler, grad_accum=2)
    norms = [unscale_and_clip(list(net.parameters()), opt, scaler, math.inf)
             for net, opt, scaler in zip(nets, optimizers, scalers)]
    for opt, scaler in zip(optimizers, scalers):
        scaled_step(opt, scaler)
    assert math.isfinite(norms[0]) and not math.isfinite(norms[1])
    assert [scaler.get_scale() for scaler in scalers] == [2.0**10, 2.0**9]
    moved = [any(not torch.equal(a, b) for a, b in zip(old, net.parameters())) for old, net in zip(before, nets)]
    assert moved == [True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs a GPU (Accelerate has no CPU scaler)")
def test_fp16_gives_each_network_a_loss_scaler_that_resumes(tmp_path):
    script = Path(__file__).parent / "run_tiny_fit.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    run = [sys.executable, str(script), str(tmp_path / "fp16"), "fp16", "--critic-start", "2"]
    subprocess.run(run, env=env, check=True, timeout=300)
    state = json.loads((tmp_path / "fp16" / "checkpoints" / "step_00000008" / "state.json").read_text())
    model_scaler, critic_scaler = state["scaler"], state["networks"]["critic"]["scaler"]
    assert model_scaler is not None and critic_scaler is not None
    # Apart: the critic's scale grows on its own count of good steps (it starts later), not the model's.
    assert model_scaler["_growth_tracker"] == 8 and critic_scaler["_growth_tracker"] == 6
    subprocess.run([*run, "--steps", "12", "--resume"], env=env, check=True, timeout=300)
    resumed = json.loads((tmp_path / "fp16" / "checkpoints" / "step_00000012" / "state.json").read_text())
    assert resumed["networks"]["critic"]["scaler"]["_growth_tracker"] == 10


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_with_two_networks(tmp_path, cpu_launch):
    script = Path(__file__).parent / "run_tiny_fit.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    args = [str(script), "--critic-start", "3"]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], env=env, timeout=180)
    two = subprocess.run([*cpu_launch(2), *args, str(tmp_path / "two")], env=env, timeout=180)
    assert one.returncode == 0 and two.returncode == 0
    rows_one, rows_two = ([r for r in _rows(tmp_path / run) if "train/loss" in r] for run in ("one", "two"))
    assert [r["step"] for r in rows_one if "train/critic_loss" in r] == list(range(4, 9))
    assert [r.keys() for r in rows_one] == [r.keys() for r in rows_two]
    for key in ("train/loss", "train/critic_loss", "train/critic_grad_norm"):
        one_values, two_values = ([r[key] for r in rows if key in r] for rows in (rows_one, rows_two))
        assert one_values == pytest.approx(two_values, rel=1e-5), key
    for file in ("model", "critic"):
        expected, got = (_weights_of(_checkpoint(tmp_path / run, 8), file) for run in ("one", "two"))
        for name, tensor in expected.items():
            torch.testing.assert_close(tensor, got[name], rtol=1e-5, atol=1e-6)
