import pytest

from vqgen.errors import VqgenError
from vqgen.runs import MetricsLog, atomic_path, read_json, run_stage, sha256_file, write_json


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
