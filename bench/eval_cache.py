"""What the statistics cache saves a second demo run: the evaluation stages, first with an empty
cache and then with the one they filled (issue 17).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.eval_cache [--run runs/demo]

Copies a finished pipeline run's trained models and samples (config.yaml, tokenizer/, codes/, prior/,
samples/ and those four stages' records) into a temporary folder, where the pipeline has only its
evaluation stages left to run: reconstruct, fid and classifier. Pass 1 runs them with a new, empty
cache, as the first `make demo` on a machine does. Pass 2 removes their records and outputs from the
copy and runs them again with the cache pass 1 filled, as a second `make demo` does (its classifier
is trained again, as it is in a new run folder). Both passes score the same models and samples, so
they must report the same FID; the bench checks it.

Each pass reports the pipeline's own per-stage wall seconds and the process's CPU seconds. On this
busy 2-core machine the CPU seconds of a one-thread run are the fairer comparison: they do not count
the time other processes held the core. Prints one JSON line and writes bench/results/eval_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.config import load_config
from core.runs import read_json, write_json
from eval.cache import StatsCache
from vqgen.pipeline import PipelineConfig, run_pipeline

RESULT = Path(__file__).parent / "results" / "eval_cache.json"
TRAINED = ("tokenizer", "codes", "prior", "samples")  # the stages before evaluation, reused as they are
EVALUATION = ("reconstruct", "fid", "classifier")


def copy_trained(run: Path, into: Path) -> None:
    """The parts of `run` that the evaluation stages read, and the records that mark them finished."""
    (into / "stages").mkdir(parents=True)
    shutil.copyfile(run / "config.yaml", into / "config.yaml")
    for stage in TRAINED:
        shutil.copytree(run / stage, into / stage)
        shutil.copyfile(run / "stages" / f"{stage}.json", into / "stages" / f"{stage}.json")


def forget_evaluation(copy: Path) -> None:
    """Remove the evaluation stages' records and outputs from our own copy, so that they run again."""
    for stage in EVALUATION:
        (copy / "stages" / f"{stage}.json").unlink(missing_ok=True)
    for output in ("eval", "classifier", "report.md", "metrics.json"):
        path = copy / output
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def evaluation_pass(cfg: PipelineConfig, copy: Path, cache: StatsCache) -> dict[str, Any]:
    forget_evaluation(copy)
    cpu, wall = time.process_time(), time.perf_counter()
    run_pipeline(cfg, copy, cache=cache)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stages = {stage: read_json(copy / "stages" / f"{stage}.json", "stage record") for stage in EVALUATION
              if (copy / "stages" / f"{stage}.json").exists()}
    return {"stage_wall_s": {stage: record["seconds"] for stage, record in stages.items()},
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "fid": stages["fid"]["fid"],
            "real_data_fid": stages["fid"]["real_data"]["fid"], "load_avg_1min_end": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished `vqgen pipeline` run")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(PipelineConfig, args.run / "config.yaml")
    record: dict[str, Any] = {"benchmark": "eval_cache", "run": str(args.run), "threads": torch.get_num_threads(),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                              "cpus": os.cpu_count(), "load_avg_1min_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        copy, cache = Path(tmp) / "run", StatsCache(Path(tmp) / "cache")
        copy_trained(args.run, copy)
        record["first_run"] = evaluation_pass(cfg, copy, cache)
        record["second_run"] = evaluation_pass(cfg, copy, cache)
    first, second = record["first_run"], record["second_run"]
    if first["fid"] != second["fid"]:
        raise SystemExit(f"bench.eval_cache: the two passes disagree (FID {first['fid']} vs {second['fid']})")
    record["second_over_first_cpu"] = round(second["cpu_s"] / first["cpu_s"], 3)
    record["second_over_first_wall"] = round(second["wall_s"] / first["wall_s"], 3)
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
