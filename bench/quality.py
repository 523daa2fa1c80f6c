"""The generator of a pipeline run at the literature's protocol: 10,000 samples against the 10,000
test images (issue 17; BENCHMARKS.md, "Sample quality at 10,000").

    .venv/bin/python -m bench.quality --run runs/demo      # about an hour on a 2-core CPU

Takes a pipeline run folder (its tokenizer/ and prior/, and config.yaml for the data and sampling
settings) and draws 10,000 samples into RUN/quality/samples, class-balanced where the run's sampling
was (resumable: images already drawn are kept). It scores them with Inception FID, sFID, KID,
precision/recall and density/coverage against the whole test split (10,000 images), the real-data
floor at N = 10,000 (the first 10,000 train images, scored the same way), and classifier FID with the
run's classifier (RUN/classifier) when it trained one. Reference and floor statistics go through
the statistics cache ($VQGEN_CACHE), so a second run spends its time on the samples only.

Not part of `make bench`: it needs a run and takes an hour. Prints one JSON line and writes it to
bench/results/quality_<run folder name>.json (one file per run scored).
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

from bench.pipeline_run import pipeline_run_config
from core.data import load_images
from core.errors import VqgenError
from core.runs import write_json
from eval.cache import StatsCache
from eval.classifier_fid import classifier_fid
from eval.fid import fid
from sampling.decode import sample
from sampling.generate import SampleConfig
from vqgen.pipeline import PipelineConfig

N = 10_000  # samples, and test images: the protocol of Lucic et al. (2018) and the tables after it
RESULTS = Path(__file__).parent / "results"
RUN_PARTS = ("config.yaml", "tokenizer/model", "prior/model")
# The scores, a line for each one that is unavailable (kid, precision_recall), and the protocol.
INCEPTION_KEYS = ("fid", "sfid", "kid_mean", "kid_std", "kid", "precision", "recall", "density", "coverage",
                  "precision_recall", "pr_n", "n_samples", "weights_source", "weights_sha", "resize")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="a `vqgen pipeline` run folder holding tokenizer/, prior/ and config.yaml")
    return parser.parse_args(argv)


def run_config(run: Path) -> PipelineConfig:
    return pipeline_run_config(run, RUN_PARTS, "a pipeline run with a trained tokenizer and prior",
                               "pass --run with the --out folder of a `vqgen pipeline` run")


def sample_config(cfg: PipelineConfig, num_classes: int) -> SampleConfig:
    """The run's own sampling settings, drawing N images: N / classes of each class where the run's
    sampling was class-balanced, else N."""
    if cfg.sample.per_class > 0 and num_classes:
        return dataclasses.replace(cfg.sample, per_class=N // num_classes, classes=None)
    return dataclasses.replace(cfg.sample, per_class=0, n=N)


def classifier_scores(run: Path, samples: Path, cfg: PipelineConfig) -> dict[str, Any] | str:
    if not (run / "classifier" / "model").exists():
        return f"classifier FID: unavailable ({run} trained no classifier: eval.use_classifier was false)"
    return classifier_fid(run / "classifier", samples, cfg.data, n=N, split="test")


def measure(run: Path) -> dict[str, Any]:
    cfg = run_config(run)
    started = time.time()
    drawn = sample(run / "prior" / "model", run / "tokenizer" / "model",
                   sample_config(cfg, load_images(cfg.data, "test").num_classes), run / "quality" / "samples")
    sampled = time.time()
    # n_ref=N: all 10,000 test images (a split with fewer is refused in one line).
    scores = fid(drawn / "images", cfg.data, n=N, n_ref=N, split="test", cache=StatsCache())
    scored = time.time()
    return {"benchmark": "quality", "run": str(run), "data": cfg.data.spec, "image_size": cfg.data.image_size,
            "protocol": f"{N:,} samples against the {N:,} test images; real data: the first {N:,} train images",
            "inception": {key: scores[key] for key in INCEPTION_KEYS if key in scores},
            "real_data": scores["real_data"], "classifier": classifier_scores(run, drawn / "images", cfg),
            "seconds": {"sampling": round(sampled - started, 1), "inception": round(scored - sampled, 1),
                        "classifier": round(time.time() - scored, 1)},
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": {"platform": platform.platform(),
                                                                  "cpu_count": os.cpu_count()}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        record = measure(args.run)
    except VqgenError as err:
        raise SystemExit(f"bench.quality: error: {err}") from None
    write_json(RESULTS / f"quality_{args.run.resolve().name}.json", record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
