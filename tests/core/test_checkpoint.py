"""Checkpoints as the training loop writes and resumes them: nothing is unpickled, a bad newest checkpoint
falls back to the one before, and a full disk leaves the previous checkpoint to resume from."""

import dataclasses
import hashlib
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import checkpoint
from core.errors import VqgenError
from core.loop import TrainState, fit

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from killing import Killed  # noqa: E402
from run_tiny_fit import CFG as CFG_TINY_FIT  # noqa: E402
from run_tiny_fit import ScriptTask  # noqa: E402
from tiny_task import CFG, TinyTask, saved_weights  # noqa: E402

MARKER = "PAYLOAD_RAN"


class Payload:
    """Unpickling this creates a marker file: proof that a planted pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    return saved_weights(fit(TinyTask(), CFG, tmp_path_factory.mktemp("whole")))


def _stopped_run(out: Path) -> Path:
    """A run killed in step 10, with checkpoints at steps 4 and 8; returns the newest checkpoint."""
    with pytest.raises(Killed):
        fit(TinyTask(kill_at_call=10), CFG, out)
    return out / "checkpoints" / "step_00000008"


def _assert_same(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


# Accelerate's pickle files (its custom states load with weights_only=False, which runs a plain pickle
# as torch.load's legacy format) and the loop's own files.
@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl",
                                  "optimizer.bin", "scheduler.bin", "scaler.pt", "pytorch_model.bin",
                                  "model.safetensors", "optimizer.safetensors", "state.json", "rng_0.json"])
def test_planted_pickles_never_run(tmp_path, uninterrupted, name):
    newest = _stopped_run(tmp_path)
    marker = tmp_path / MARKER
    (newest / name).write_bytes(pickle.dumps(Payload(marker)))
    resumed = fit(TinyTask(), CFG, tmp_path, resume=True)
    assert not marker.exists(), f"a pickle planted as {name} ran"
    _assert_same(saved_weights(resumed), uninterrupted)  # ignored, or a fallback to step 4: exact all the same


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated weights": lambda ckpt: _truncate(ckpt / "model.safetensors"),
    "truncated optimizer": lambda ckpt: _truncate(ckpt / "optimizer.safetensors"),
    "garbage counters": lambda ckpt: (ckpt / "state.json").write_text('{"format": 1, "counters": {"step": "x"}}'),
    "empty random state": lambda ckpt: (ckpt / "rng_0.json").write_bytes(b""),
    "missing weights": lambda ckpt: (ckpt / "model.safetensors").unlink(),
    "weights of another model": lambda ckpt: (ckpt / "model.safetensors").write_bytes(
        (ckpt.parent / "step_00000004" / "optimizer.safetensors").read_bytes()),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, uninterrupted, corrupt, caplog):
    newest = _stopped_run(tmp_path)
    corrupt(newest)
    resumed = fit(TinyTask(), CFG, tmp_path, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(newest) in w and "cannot be resumed from" in w for w in warnings), warnings
    # Resumed from step 4 alone: nothing of the bad step 8 mixed in, so the run ends exactly as if never stopped.
    _assert_same(saved_weights(resumed), uninterrupted)


def test_no_checkpoint_that_loads_is_one_line(tmp_path):
    _stopped_run(tmp_path)
    for ckpt in (tmp_path / "checkpoints").iterdir():
        _truncate(ckpt / "model.safetensors")
    with pytest.raises(VqgenError) as refused:
        fit(TinyTask(), CFG, tmp_path, resume=True)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "checkpoints") in message
    assert "step_00000004: model.safetensors" in message and "step_00000008: model.safetensors" in message
    assert "new --out" in message


def test_checkpoint_of_the_old_pickle_format_is_refused(tmp_path):
    ckpt = _stopped_run(tmp_path)
    for other in (tmp_path / "checkpoints").iterdir():
        if other != ckpt:
            (other / "state.json").unlink()
    (ckpt / "state.json").unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        (ckpt / name).write_bytes(pickle.dumps({"step": 8}))
    with pytest.raises(VqgenError, match="step_00000008: in the pickle format"):
        fit(TinyTask(), CFG, tmp_path, resume=True)


def test_full_disk_is_one_line_and_the_checkpoint_before_resumes(tmp_path):
    """Killed (-9) at step 6, then resumed where a write fails for room (EFBIG under `ulimit -f`, as ENOSPC
    on a full disk) in the step 8 checkpoint: one line naming the file, and step 4 still resumes exactly."""
    whole = saved_weights(fit(ScriptTask(), dataclasses.replace(CFG_TINY_FIT, steps=12), tmp_path / "whole"))
    run = tmp_path / "run"
    assert _tiny_fit(run, "--steps", "12", "--sigkill-at-call", "6").returncode == -signal.SIGKILL
    before = run / "checkpoints" / "step_00000004"
    digests = _digests(before)
    # Half the largest checkpoint file: every checkpoint fails, metrics.jsonl and the rest still fit.
    limit = max(f.stat().st_size for f in before.iterdir()) // 2
    assert limit > 4 * (run / "metrics.jsonl").stat().st_size
    failed = _tiny_fit(run, "--steps", "12", "--resume", file_size_limit=limit)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("run_tiny_fit: error: ") and "File too large" in line
    assert str(run / "checkpoints" / ".step_00000008.tmp") in line  # the file that did not fit
    assert f"the last good checkpoint, {before}, is intact" in line and "--resume" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]  # no half checkpoint
    assert _digests(before) == digests
    resumed = fit(ScriptTask(), dataclasses.replace(CFG_TINY_FIT, steps=12), run, resume=True)
    _assert_same(saved_weights(resumed), whole)


def test_full_disk_while_saving_the_model_is_one_line(tmp_path):
    """The final save_pretrained writes through safetensors' own writer, whose errors are not OSErrors."""
    run = tmp_path / "run"
    assert _tiny_fit(run, "--dim", "64").returncode == 0  # weights 4 kB, metrics.jsonl 1 kB
    limit = (run / "model" / "model.safetensors").stat().st_size // 2
    assert limit > (run / "metrics.jsonl").stat().st_size
    shutil.rmtree(run / "model")  # as if killed while saving it: --resume then only saves the model
    failed = _tiny_fit(run, "--dim", "64", "--resume", file_size_limit=limit)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "File too large" in line and str(run / "checkpoints" / "step_00000008") in line
    assert not (run / "model").exists() and not list(run.glob(".model*"))  # nothing half-written left


def _tiny_fit(out: Path, *args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """run_tiny_fit.py in a process of its own (the folder lock is per process), under `ulimit -f` if given;
    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG."""
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, str(Path(__file__).parent / "run_tiny_fit.py"), str(out), *args],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"},
        preexec_fn=limit_file_size if file_size_limit else None, capture_output=True, text=True, timeout=120,
    )


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_resume_exactly_past_a_bad_random_state(tmp_path, cpu_launch):
    """Each process saves its own random generators (here for dropout): when only process 1 cannot read its
    file in the newest checkpoint, both fall back to the one before, and the run ends as if never stopped."""
    script = [str(Path(__file__).parent / "run_tiny_fit.py")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}

    def launch(out: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cpu_launch(2), *script, str(out), "--steps", "12", "--dropout", "0.5", *args],
                              env=env, capture_output=True, text=True, timeout=180)

    assert launch(tmp_path / "whole").returncode == 0
    assert launch(tmp_path / "split", "--sigkill-at-call", "10").returncode != 0  # checkpoints at steps 4 and 8
    (tmp_path / "split" / "checkpoints" / "step_00000008" / "rng_1.json").write_text("{}")
    resumed = launch(tmp_path / "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same(saved_weights(tmp_path / "split" / "model"), saved_weights(tmp_path / "whole" / "model"))


def _trained(name: str, scale: float) -> checkpoint.Trained:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(torch.ones(()))  # the scale tensor is made on first use
    return checkpoint.Trained(name, model, optimizer, scheduler, scaler)


@pytest.mark.parametrize("scales", [(1024.0,), (1024.0, 8.0)], ids=["one network", "two networks"])
def test_each_fp16_loss_scale_is_resumed(tmp_path, scales):
    """Accelerate's GradScaler exists under fp16 on a GPU only; the CPU one has the same state."""
    names = ["model", "discriminator"][: len(scales)]
    saved = checkpoint.Parts([_trained(name, scale) for name, scale in zip(names, scales)], TrainState())
    fresh = checkpoint.Parts([_trained(name, 2.0**16) for name in names], TrainState())
    checkpoint.save(tmp_path, saved, process_index=0, num_processes=1)
    checkpoint.apply(checkpoint.read(tmp_path, fresh, process_index=0), fresh)
    assert [net.scaler.get_scale() for net in fresh.networks] == list(scales)
    assert all(a.scaler.state_dict() == b.scaler.state_dict() for a, b in zip(fresh.networks, saved.networks))
    for net in fresh.networks:
        assert all(torch.equal(a, b) for a, b in zip(net.model.state_dict().values(),
                                                      saved.networks[names.index(net.name)].model.state_dict().values()))
