"""MaskGIT's parallel decoding against the KV-cached autoregressive GPT prior: images/s on a CPU.

    OMP_NUM_THREADS=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.maskgit_sampling

Token generation only (the tokenizer's decoding is the same for both priors), batch 64, unguided,
temperature 1, no filters: `generate_gpt` with the dynamic KV cache (the default) against
`generate_maskgit` with S = 8 and 12 steps. Both priors use the `demo` preset, whose MaskGIT MLP is
3/2 as wide so that the parameter counts match (both are recorded); the weights are untrained,
which does not change the work per image. Grids: 8x8 with K = 512 (the demo's codes) and 16x16
with K = 1024, N = 10 classes. Medians of REPEATS runs after one warm-up; every run draws the same
samples (checked). The 1-minute load average is recorded before and after: the machine is shared.

Prints one JSON line and writes it to bench/results/maskgit_sampling.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from core.runs import write_json
from sampling.generate import GridSpec, SampleConfig, generate_gpt
from sampling.maskgit import generate_maskgit
from stage2_prior.gpt import build_gpt, count_parameters
from stage2_prior.maskgit import build_maskgit
from stage2_prior.vocab import PriorVocab

PRESET, N, BATCH, REPEATS = "demo", 10, 64, 3
GRIDS = {8: 512, 16: 1024}  # grid side -> K
STEPS = (8, 12)
RESULT = Path(__file__).parent / "results" / "maskgit_sampling.json"


def images_per_second(draw, model, spec: GridSpec, cfg: SampleConfig) -> float:
    """Median images/s of `draw` over REPEATS batches of BATCH, after a warm-up; same codes every run."""
    labels, indices = torch.arange(BATCH) % N, list(range(BATCH))
    first = draw(model, spec, labels, indices, cfg)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        codes = draw(model, spec, labels, indices, cfg)
        times.append(time.perf_counter() - start)
        assert torch.equal(codes, first), "sampling is not deterministic"
    return round(BATCH / statistics.median(times), 2)


def compare(grid: int) -> dict:
    """images/s of the AR prior and of MaskGIT at each S on one grid size, and their ratios."""
    k = GRIDS[grid]
    spec = GridSpec(PriorVocab(k, N), grid, grid)
    torch.manual_seed(0)
    gpt = build_gpt(PRESET, k, N, grid, grid).eval()
    maskgit = build_maskgit(PRESET, k, N, grid, grid).eval()
    base = SampleConfig(seed=0, batch_size=BATCH)
    ar = images_per_second(generate_gpt, gpt, spec, base)
    result = {"codebook_size": k, "tokens": grid * grid, "params_gpt": count_parameters(gpt),
              "params_maskgit": count_parameters(maskgit), "images_per_s_ar_kv_cache": ar}
    for steps in STEPS:
        cfg = SampleConfig(seed=0, batch_size=BATCH, steps=steps)
        speed = images_per_second(generate_maskgit, maskgit, spec, cfg)
        result[f"images_per_s_maskgit_s{steps}"] = speed
        result[f"speedup_maskgit_s{steps}_vs_ar"] = round(speed / ar, 2)
    return result


def main() -> None:
    load_before = os.getloadavg()[0]
    started = time.time()
    grids = {f"{g}x{g}": compare(g) for g in GRIDS}
    record = {
        "benchmark": "maskgit_sampling",
        "date": date.today().isoformat(),
        "setup": {"preset": PRESET, "family": "llama (gpt) / bert (maskgit)", "num_classes": N, "batch": BATCH,
                  "repeats": REPEATS, "temperature": 1.0, "cfg_scale": 1.0, "kv_cache": "dynamic",
                  "choice_temperature": 4.5, "device": "cpu", "threads": torch.get_num_threads(),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
                  "machine": platform.machine(), "processor": platform.processor() or platform.platform(),
                  "torch": torch.__version__},
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.time() - started, 1),
        "grids": grids,
        "target_speedup_16x16": 8.0,
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
