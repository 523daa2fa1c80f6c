import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import VqgenError
from core.runs import (
    MetricsLog,
    atomic_path,
    claim_output,
    disk_full_errno,
    disk_full_is_user_error,
    read_json,
    run_stage,
    sha256_file,
    write_json,
)


def test_atomic_file_is_all_or_nothing(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir_replaces_whole_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale").write_text("x")
    with atomic_path(final, is_dir=True) as tmp:
        (tmp / "weights").write_text("w")
    assert sorted(p.name for p in final.iterdir()) == ["weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_json_round_trip_and_errors(tmp_path):
    write_json(tmp_path / "x.json", {"a": 1})
    assert read_json(tmp_path / "x.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VqgenError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(VqgenError, match="not found"):
        read_json(tmp_path / "none.json")


def test_metrics_log_truncates_after_resumed_step(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.append({"step": step, "loss": float(step)})
    log.truncate_after(3)
    assert [r["step"] for r in log.read()] == [1, 2, 3]


def test_run_stage_runs_once(tmp_path):
    calls = []
    body = lambda: calls.append(1) or {"seconds": 1.0}  # noqa: E731
    assert run_stage(tmp_path, "tokenizer", body) == {"seconds": 1.0}
    assert run_stage(tmp_path, "tokenizer", body)["skipped"] is True
    assert len(calls) == 1


def test_run_stage_refuses_a_stage_finished_with_other_settings(tmp_path):
    body = lambda: {"seconds": 1.0}  # noqa: E731
    run_stage(tmp_path, "prior", body, settings={"prior": {"train": {"steps": 8, "betas": (0.9, 0.95)}}})
    again = run_stage(tmp_path, "prior", body, settings={"prior": {"train": {"steps": 8, "betas": (0.9, 0.95)}}})
    assert again == {"seconds": 1.0, "skipped": True}  # the settings stay out of the record
    with pytest.raises(VqgenError, match=r"prior\.train\.steps: 8 -> 9"):
        run_stage(tmp_path, "prior", body, settings={"prior": {"train": {"steps": 9, "betas": (0.9, 0.95)}}})


def test_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


HOLD = Path(__file__).parent / "hold_output.py"


def hold(out: Path, kind: str) -> subprocess.Popen:
    """Another process that holds the lock on `out` (a vqgen writer in mid-run)."""
    holder = subprocess.Popen([sys.executable, str(HOLD), str(out), kind], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_claim_accepts_a_new_an_empty_and_an_own_folder_and_locks_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "vqgen_codes.json").write_text("{}")
    (tmp_path / "killed" / ".vqgen_codes.json.k1ll3d_x.tmp").mkdir(parents=True)  # killed before its first rename
    for name in ("new", "empty", "codes", "killed"):
        with claim_output(tmp_path / name, "codes"):
            assert (tmp_path / f".{name}.lock").read_text() == f"{os.getpid()}\n"
        assert not (tmp_path / f".{name}.lock").exists()  # released


def user_folder(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "NOTES").write_text("x")
    return tmp_path / "d"


@pytest.mark.parametrize("kind, mark, says", [
    ("codes", None, "files vqgen did not write (NOTES)"),
    ("codes", "run_config.json", "a training run"),  # --out <the tokenizer's run folder>
    ("run", "vqgen_codes.json", "a code-grid folder"),
    ("samples", "stages", "a pipeline run"),
    ("reconstruct", "metrics.json", "files vqgen did not write"),  # a metrics.json that is not ours
])
def test_claim_refuses_a_folder_vqgen_did_not_write_for_this_command(tmp_path, kind, mark, says):
    folder = user_folder(tmp_path)
    if mark:
        (folder / mark).write_text("{}")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(VqgenError) as err:
        claim_output(folder, kind)
    assert str(err.value).startswith(f"{folder}: holds {says}") and "choose another --out" in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == before and (folder / "NOTES").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # and the lock is gone


def test_claim_refuses_a_file(tmp_path):
    (tmp_path / "d").write_text("mine")
    with pytest.raises(VqgenError, match="d: is a file"):
        claim_output(tmp_path / "d", "codes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (tmp_path / "d").read_text() == "mine"


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, caplog):
    holder = hold(tmp_path / "out", "codes")
    with pytest.raises(VqgenError) as err:
        claim_output(tmp_path / "out", "codes")
    assert f"another vqgen process (pid {holder.pid}) is writing it" in str(err.value)
    holder.kill()  # SIGKILL: no cleanup runs, the lock file stays
    holder.wait()
    assert (tmp_path / ".out.lock").read_text() == f"{holder.pid}\n"
    with caplog.at_level(logging.WARNING, logger="core.runs"), claim_output(tmp_path / "out", "codes"):
        assert f"took over the lock of process {holder.pid}" in caplog.text
    assert not (tmp_path / ".out.lock").exists()


def test_a_stale_lock_file_is_taken_over_and_a_finished_writer_leaves_none(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / ".out.lock").write_text(f"{pid}\n")
    with caplog.at_level(logging.WARNING, logger="core.runs"), claim_output(tmp_path / "out", "samples"):
        assert f"took over the lock of process {pid}" in caplog.text
    holder = hold(tmp_path / "other", "samples")
    holder.communicate("")  # a writer that exits normally without releasing: released at exit
    assert holder.returncode == 0 and not (tmp_path / ".other.lock").exists()


def test_a_process_may_claim_what_it_holds(tmp_path):
    outer = claim_output(tmp_path / "run", "pipeline")
    with claim_output(tmp_path / "run", "pipeline"):
        pass
    assert (tmp_path / ".run.lock").exists()  # still held by the outer claim
    outer.release()
    assert not (tmp_path / ".run.lock").exists()


def test_atomic_dir_touches_nothing_but_its_target(tmp_path):
    (tmp_path / ".model.old").mkdir()  # a name the old replace step used, and deleted
    (tmp_path / ".model.old" / "keep").write_text("x")
    for content in ("first", "second"):
        with atomic_path(tmp_path / "model", is_dir=True) as tmp:
            (tmp / "weights").write_text(content)
    assert (tmp_path / "model" / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.old", "model"]
    assert (tmp_path / ".model.old" / "keep").read_text() == "x"


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 4):
        log.append({"step": step, "loss": float(step)})
    with open(log.path, "a") as f:
        f.write('{"loss": 4.0, "st')  # kill -9 in the middle of a write
    with caplog.at_level(logging.WARNING, logger="core.runs"):
        assert [r["step"] for r in log.read()] == [1, 2, 3]
        log.truncate_after(10)
    assert "dropped its last line" in caplog.text
    assert log.path.read_text().splitlines() == [json.dumps({"loss": float(s), "step": s}) for s in (1, 2, 3)]
    log.append({"step": 4, "loss": 4.0})
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4]


def test_a_bad_line_inside_metrics_is_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    for action in (MetricsLog(path).read, lambda: MetricsLog(path).truncate_after(1)):
        with pytest.raises(VqgenError, match=r"metrics.jsonl: line 2 is not a JSON record"):
            action()


def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(VqgenError) as err, disk_full_is_user_error(tmp_path / "out", "nothing was lost"):
        with open("/dev/full", "wb", buffering=0) as f:  # a real ENOSPC from the kernel
            f.write(b"x")
    assert str(err.value) == f"{tmp_path / 'out'}: could not write (No space left on device); nothing was lost"
    with pytest.raises(PermissionError), disk_full_is_user_error(tmp_path, "-"):  # other errors pass through
        raise PermissionError(13, "denied")


SAVE_SAFETENSORS_UNDER_ULIMIT = """
import resource, sys, torch
from safetensors.torch import save_file
from core.errors import VqgenError
from core.runs import disk_full_is_user_error
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # Python ignores SIGXFSZ: a longer write fails, EFBIG
try:
    with disk_full_is_user_error(sys.argv[1], "nothing was lost"):
        save_file({"w": torch.zeros(4096)}, sys.argv[1])
except VqgenError as err:
    print(err)
"""


def test_a_full_disk_in_safetensors_writer_is_one_line(tmp_path):
    """safetensors writes through Rust: its SafetensorError is no OSError and has the errno in its text only."""
    out = tmp_path / "w.safetensors"
    done = subprocess.run([sys.executable, "-c", SAVE_SAFETENSORS_UNDER_ULIMIT, str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stdout == f"{out}: could not write (File too large); nothing was lost\n"


def test_training_refuses_a_folder_it_did_not_write(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_task import TinyTask

    from core.loop import TrainConfig, fit

    folder = user_folder(tmp_path)
    with pytest.raises(VqgenError, match="holds files vqgen did not write"):
        fit(TinyTask(), TrainConfig(steps=1, batch_size=8), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES"]


def test_pipeline_refuses_a_folder_it_did_not_write(tmp_path, capsys, fmnist_available):
    from vqgen.cli import main

    folder = user_folder(tmp_path)
    (folder / "config.yaml").write_text("my: settings\n")  # a name the pipeline writes, but not its run
    assert main(["pipeline", "--out", str(folder), "--data.max_images=256", "--eval.inception_n=64"]) == 2
    assert f"vqgen pipeline: error: {folder}: holds files vqgen did not write" in capsys.readouterr().err
    assert (folder / "config.yaml").read_text() == "my: settings\n" and not (folder / "stages").exists()


def test_reconstruct_checks_its_request_and_its_folder_before_any_work(tmp_path):
    from core.data import DataConfig
    from eval.recon import reconstruct
    from stage1_vqvae.model import VQVAE, VQVAEConfig

    VQVAE(VQVAEConfig(base_channels=8, channel_mult=(1, 2), code_dim=4, codebook_size=8)).save_pretrained(tmp_path / "t")
    with pytest.raises(VqgenError, match="need --n >= 1"):
        reconstruct(tmp_path / "t", DataConfig(), tmp_path / "r", n=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    folder = user_folder(tmp_path)
    with pytest.raises(VqgenError, match="holds files vqgen did not write"):
        reconstruct(tmp_path / "t", DataConfig(), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES"]


def test_disk_full_errno_ends_on_an_exception_chain_that_loops_back():
    first, second = ValueError("outer"), KeyError("inner")
    first.__context__, second.__context__ = second, first  # Python allows such a loop
    assert disk_full_errno(first) is None
    second.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full_errno(first) == errno.ENOSPC
