"""How the guidance schedule moves sample quality on a trained generator (issue 18).

    .venv/bin/python -m bench.cfg_schedules --run runs/demo      # 4 x 1,000 samples: about 20 min on a 2-core CPU
    .venv/bin/python -m bench.cfg_schedules --run runs/demo --n 20 --result /tmp/trial.json   # a quick check

For each setting of SETTINGS (constant guidance, the linear and cosine ramps, and guidance on the first
half of the codes only), draws the run's own sampling protocol (its config.yaml `sample:` section:
for the demo 1,000 class-balanced samples, 100 per class, cfg_scale 1.5) with only the schedule
changed, and scores the samples with Inception FID, KID and precision/recall against the run's
reference (`eval.ref_split`, `eval.ref_n` test images), as the pipeline's fid stage does. Reference
and floor statistics go through the statistics cache ($VQGEN_CACHE), so they are computed once.
The run is only read: samples go to OUT/n<N>/<setting> (resumable). Prints one JSON line and writes
it to --result (bench/results/cfg_schedules.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench.quality import run_config
from core.data import load_images
from core.errors import VqgenError
from core.runs import write_json
from eval.cache import StatsCache
from eval.fid import fid
from sampling.decode import sample
from sampling.generate import SampleConfig
from vqgen.pipeline import PipelineConfig

RESULT = Path(__file__).parent / "results" / "cfg_schedules.json"
# name -> (cfg_schedule, cfg_interval); "constant" is the run's own sampling.
SETTINGS: dict[str, tuple[str | None, list[float] | None]] = {
    "constant": (None, None), "linear": ("linear", None), "cosine": ("cosine", None),
    "interval_0_0.5": (None, [0.0, 0.5]),
}
SCORES = ("fid", "kid_mean", "kid_std", "kid", "precision", "recall", "density", "coverage", "precision_recall",
          "n_samples")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cfg_schedules", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished `vqgen pipeline` run")
    parser.add_argument("--out", type=Path, default=Path("runs/cfg-schedules"), help="where the samples go")
    parser.add_argument("--n", type=int, default=0, help="samples per setting (0: the run's own count)")
    parser.add_argument("--result", type=Path, default=RESULT, help="the JSON file written")
    return parser.parse_args(argv)


def schedule_config(cfg: PipelineConfig, num_classes: int, n: int, name: str) -> SampleConfig:
    """The run's sampling settings with setting `name`'s schedule and interval, n samples (0: as the run),
    class-balanced where the run's sampling was."""
    schedule, interval = SETTINGS[name]
    base = dataclasses.replace(cfg.sample, cfg_schedule=schedule, cfg_interval=interval)
    if n <= 0:
        return base
    if base.per_class > 0 and num_classes:
        return dataclasses.replace(base, per_class=max(1, n // num_classes), classes=None)
    return dataclasses.replace(base, per_class=0, n=n)


def score(cfg: PipelineConfig, images: Path, cache: StatsCache) -> dict[str, Any]:
    """Inception scores of the sample folder `images` as the pipeline's fid stage takes them."""
    return fid(images, cfg.data, n=0, n_ref=cfg.eval.ref_n, split=cfg.eval.ref_split, cache=cache)


def measure(run: Path, out: Path, n: int) -> dict[str, Any]:
    cfg = run_config(run)
    if cfg.sample.cfg_scale == 1.0:
        raise VqgenError(f"{run}: its sampling has no guidance (sample.cfg_scale 1); the schedules shape guidance, "
                         "pick a run sampled with cfg_scale > 1")
    num_classes, cache = load_images(cfg.data, cfg.eval.ref_split).num_classes, StatsCache()
    results, floor = {}, None
    for name in SETTINGS:
        started = time.time()
        folder = sample(run / "prior" / "model", run / "tokenizer" / "model",
                        schedule_config(cfg, num_classes, n, name), out / f"n{n or 'run'}" / name)
        sampled = time.time()
        scores = score(cfg, folder / "images", cache)
        floor = scores["real_data"]
        results[name] = {**{key: scores[key] for key in SCORES if key in scores},
                         "seconds": {"sampling": round(sampled - started, 1),
                                     "inception": round(time.time() - sampled, 1)}}
    return {"benchmark": "cfg_schedules", "run": str(run), "cfg_scale": cfg.sample.cfg_scale,
            "settings": {name: {"cfg_schedule": s or "constant", "cfg_interval": i} for name, (s, i) in SETTINGS.items()},
            "protocol": f"the run's sampling ({results['constant'].get('n_samples')} samples) against "
                        f"{cfg.eval.ref_n or 'all'} {cfg.eval.ref_split} images",
            "scores": results, "real_data": floor, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        record = measure(args.run, args.out, args.n)
    except VqgenError as err:
        raise SystemExit(f"bench.cfg_schedules: error: {err}") from None
    write_json(args.result, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
