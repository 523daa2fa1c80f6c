import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqgen.errors import VqgenError
from vqgen.loop import TrainConfig, fit, param_groups, warmup_cosine

sys.path.insert(0, str(Path(__file__).parent))
from tiny_task import Killed, TinyModel, TinyTask  # noqa: E402

CFG = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=3, eval_every=4, save_every=4, log_every=1)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def _train_losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"], r.get("train/noise")) for r in rows if "train/loss" in r]


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


@pytest.mark.parametrize("grad_accum,ema", [(1, 0.0), (2, 0.9)])
def test_resume_is_exact(tmp_path, grad_accum, ema):
    cfg = TrainConfig(**{**CFG.__dict__, "grad_accum": grad_accum, "ema_decay": ema})
    whole = fit(TinyTask(), cfg, tmp_path / "whole")
    # Killed in the middle of step 10 (micro-batch calls count grad_accum per step); the last checkpoint is 8.
    with pytest.raises(Killed):
        fit(TinyTask(kill_at_step=10 * grad_accum), cfg, tmp_path / "split")
    resumed = fit(TinyTask(), cfg, tmp_path / "split", resume=True)
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


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(VqgenError, match="NaN"):
        fit(TinyTask(nan_at_step=6), CFG, tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000004"]
    assert not (tmp_path / "model").exists()


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
