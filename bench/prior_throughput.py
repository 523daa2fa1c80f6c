"""Training throughput of the priors on CPU: code tokens per second of one optimizer step.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.prior_throughput

One step = teacher-forced forward over a batch of random 16x16 grids (K=1024, N=10 classes),
cross-entropy, backward, AdamW. The models are timed in alternation (round-robin), several repeats
after a warm-up, and medians reported, so machine load affects them alike.

Prints one JSON line and writes it to bench/results/prior_throughput.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from stage2_prior.gpt import build_gpt, count_parameters
from stage2_prior.pixelcnn import build_pixelcnn
from stage2_prior.train import code_logits
from stage2_prior.vocab import PriorVocab
from vqgen.runs import write_json

K, N, GRID, BATCH = 1024, 10, 16, 8
RESULT = Path(__file__).parent / "results" / "prior_throughput.json"
MODELS = {
    "gpt-llama-tiny": ("gpt", lambda: build_gpt("tiny", K, N, GRID, GRID)),
    "gpt-gpt2-tiny": ("gpt", lambda: build_gpt("tiny", K, N, GRID, GRID, family="gpt2")),
    "gpt-llama-small": ("gpt", lambda: build_gpt("small", K, N, GRID, GRID)),
    "pixelcnn-tiny": ("pixelcnn", lambda: build_pixelcnn("tiny", K, N, GRID, GRID)),
    "pixelcnn-small": ("pixelcnn", lambda: build_pixelcnn("small", K, N, GRID, GRID)),
}


def train_step(model, optimizer, arch: str, codes: torch.Tensor, index: torch.Tensor) -> float:
    start = time.perf_counter()
    logits = code_logits(model, arch, PriorVocab(K, N), codes, index)
    loss = F.cross_entropy(rearrange(logits, "b t k -> (b t) k"), codes.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(repeats: int = 7, warmup: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (BATCH, GRID, GRID), generator=gen)
    index = torch.randint(0, N + 1, (BATCH,), generator=gen)
    torch.manual_seed(0)
    built = {name: (arch, make().train()) for name, (arch, make) in MODELS.items()}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (_, model) in built.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    for i in range(warmup + repeats):
        for name, (arch, model) in built.items():
            elapsed = train_step(model, optimizers[name], arch, codes, index)
            if i >= warmup:
                times[name].append(elapsed)
    tokens = BATCH * GRID * GRID
    return {
        name: {
            "params": count_parameters(model),
            "step_s_median": round(statistics.median(times[name]), 4),
            "tokens_per_s": round(tokens / statistics.median(times[name])),
        }
        for name, (_, model) in built.items()
    }


def main() -> None:
    record = {
        "benchmark": "prior_throughput",
        "setup": {"codebook_size": K, "num_classes": N, "grid": [GRID, GRID], "batch": BATCH, "device": "cpu",
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()},
        "models": measure(),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
