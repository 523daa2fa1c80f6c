"""The demo's baseline: per-stage wall time, FID, KID and classifier FID of the Fashion-MNIST pipeline.

    python -m bench.demo                 # run configs/fashion-mnist.yaml into runs/bench-demo
    python -m bench.demo --run runs/demo # read a finished run instead (e.g. after `make demo`)

Prints one JSON line and writes bench/results/demo.json: the numbers the next versions must beat.
"""

import json
import os
import platform
import sys
from pathlib import Path

from core.runs import read_json, write_json
from vqgen.cli import main as vqgen_main

RESULT = Path(__file__).parent / "results" / "demo.json"
CONFIG = "configs/fashion-mnist.yaml"


def main() -> None:
    if "--run" in sys.argv:
        run = Path(sys.argv[sys.argv.index("--run") + 1])
    else:
        run = Path("runs/bench-demo")
        if vqgen_main(["pipeline", "--config", CONFIG, "--out", str(run)]) != 0:
            raise SystemExit(f"the pipeline failed; see {run}")
    metrics = read_json(run / "metrics.json", "pipeline metrics")
    summary = metrics["summary"]
    record = {
        "benchmark": "demo",
        "run": str(run),
        "config": CONFIG,
        "stage_seconds": summary["stage_seconds"],
        "total_seconds": round(sum(v for v in summary["stage_seconds"].values() if v), 1),
        "scores": {k: v for k, v in summary.items() if k != "stage_seconds"},
        "machine": {**metrics["machine"], "arch": platform.machine(), "load_avg_1min": os.getloadavg()[0]},
        "versions": metrics["versions"],
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
