"""Tokenizer training speed on a busy CPU: idle, beside a busy loop, beside a twin run.

    .venv/bin/python -m bench.busy_machine [--steps 30] [--repeats 3] [--policies today,vqgen]

Each condition runs the demo tokenizer's training (`train_tokenizer`, default preset, threads as
torch chooses them) in a fresh process and reads seconds per step from its metrics.jsonl, after
the first WARMUP steps. Two policies are compared in the same run:
  today  - libgomp's default spin-wait at a fixed thread count (one per core), as before vqgen set anything,
  vqgen  - libgomp's default, with the training loop following the other processes' load
           (core.cpu_threads.LoadFollower), as every vqgen run on a CPU.
For each policy: s/step idle, beside one process spinning in a Python loop, and beside a second
identical training run (the mean of the two), as ratios of its own idle speed. Medians over
--repeats. Prints one JSON line and writes bench/results/busy_machine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULT = Path(__file__).parent / "results" / "busy_machine.json"
WARMUP = 10  # steps before the timing starts (allocator and OpenMP pools warm up)
# Candidate policies for exploring (--policies); "vqgen" is libgomp's default with the training loop's
# LoadFollower. The others fix the thread count (a user's own count turns the follower
# off), so they show the wait policy alone; "today" is libgomp's default, as before vqgen set anything.
CORES = str(len(os.sched_getaffinity(0)))
CANDIDATES = {"today": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin10k": {"GOMP_SPINCOUNT": "10000"},
              "spin1k": {"GOMP_SPINCOUNT": "1000"}}
CANDIDATES = {name: {**env, "OMP_NUM_THREADS": CORES} for name, env in CANDIDATES.items()}
POLICIES = ("today", "vqgen", *CANDIDATES)
SPIN = "while True: pass"


def worker(policy: str, steps: int, out: Path) -> None:
    """Train for `steps` and write the seconds per step after WARMUP to `out` (runs in a child)."""
    os.environ.update(CANDIDATES.get(policy, {}))
    import dataclasses

    from core.runs import MetricsLog
    from stage1_vqvae.train import TokenizerRunConfig, train_tokenizer

    cfg = TokenizerRunConfig()
    train = dataclasses.replace(cfg.train, steps=steps, log_every=1, eval_every=10 * steps, save_every=10 * steps)
    cfg = dataclasses.replace(cfg, train=train, data=dataclasses.replace(cfg.data, max_images=4096))
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(cfg, Path(tmp) / "run")
        elapsed = {r["step"]: r["elapsed_s"] for r in MetricsLog(Path(tmp) / "run" / "metrics.jsonl").read()
                   if "train/loss" in r}
    out.write_text(json.dumps((elapsed[steps] - elapsed[WARMUP]) / (steps - WARMUP)))


def _start(policy: str, steps: int, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return subprocess.Popen([sys.executable, "-m", "bench.busy_machine", "--worker", policy, "--steps", str(steps),
                             "--result", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def condition(policy: str, steps: int, beside: str) -> float:
    """s/step of one run of `policy` next to nothing, a spinning process, or a twin run."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(2 if beside == "twin" else 1)]
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if beside == "busy" else None
        try:
            runs = [_start(policy, steps, out) for out in outs]
            if any(run.wait() != 0 for run in runs):
                raise RuntimeError(f"worker failed ({policy}, {beside})")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        return statistics.mean(json.loads(out.read_text()) for out in outs)


def measure(steps: int, repeats: int, policies: list[str]) -> dict:
    result = {}
    for policy in policies:
        s = {beside: statistics.median(condition(policy, steps, beside) for _ in range(repeats))
             for beside in ("idle", "busy", "twin")}
        result[policy] = {**{f"{k}_s_per_step": round(v, 4) for k, v in s.items()},
                          "busy_vs_idle": round(s["idle"] / s["busy"], 3),
                          "twin_vs_idle": round(s["idle"] / s["twin"], 3)}
    if {"today", "vqgen"} <= result.keys():
        result["vqgen_idle_vs_today_idle"] = round(result["today"]["idle_s_per_step"] / result["vqgen"]["idle_s_per_step"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", default="today,vqgen", help="comma-separated, from: " + ", ".join(POLICIES))
    parser.add_argument("--worker", choices=POLICIES)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.result)
        return
    record = {"benchmark": "busy_machine",
              "setup": {"config": "TokenizerRunConfig() (preset small, fashion-mnist 32px, first 4096 images)",
                        "steps": args.steps, "warmup": WARMUP, "repeats": args.repeats, "cpus": os.cpu_count(),
                        "machine": platform.machine(), "load_avg_1min_before": round(os.getloadavg()[0], 2)},
              "result": measure(args.steps, args.repeats, args.policies.split(","))}
    RESULT.parent.mkdir(exist_ok=True)
    from core.runs import write_json

    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
