"""Our VectorQuantizer against vector_quantize_pytorch.VectorQuantize, measured in the same run.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.quantizer

1. Speed: forward+backward of (||z_q||^2 + commitment loss) on 16,384 vectors, K=1024, D=64, on
   CPU, with identical settings in both (EMA decay 0.99, eps 1e-5, commitment weight 0.25, plain
   straight-through estimator, no k-means, no dead-code replacement). The two are timed in
   alternation, several repeats, and the medians compared.
2. Codebook usage: both train on the same stream of clustered Gaussian vectors for the same number
   of steps, then quantize fresh vectors from the stream; usage = share of the K codes hit. Two
   streams: a stationary one from a random (non k-means) init, and one whose clusters drift, from a
   k-means init. VectorQuantize runs without and with its own dead-code replacement
   (threshold_ema_dead_code=2); ours runs with its defaults (restart after 20 idle steps).

Prints one JSON line and writes it to bench/results/quantizer.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from core.runs import write_json
from stage1_vqvae.quantizers import VectorQuantizer, VQConfig

K, D, BATCH, GRID = 1024, 64, 16, 32  # 16 * 32 * 32 = 16,384 vectors
DECAY, BETA = 0.99, 0.25
RESULT = Path(__file__).parent / "results" / "quantizer.json"


def ours(kmeans: bool, restart: int = VQConfig.restart_after_steps) -> VectorQuantizer:
    cfg = VQConfig(codebook_size=K, beta=BETA, decay=DECAY, kmeans_init=kmeans, restart_after_steps=restart)
    return VectorQuantizer(cfg, dim=D)


def theirs(kmeans: bool, dead_threshold: float = 0) -> VectorQuantize:
    return VectorQuantize(
        dim=D, codebook_size=K, decay=DECAY, eps=1e-5, commitment_weight=BETA, kmeans_init=kmeans,
        threshold_ema_dead_code=dead_threshold, rotation_trick=False, accept_image_fmap=True,
    )


def step_ours(q: nn.Module, z: torch.Tensor) -> torch.Tensor:
    out = q(z)
    return out.z_q.square().mean() + out.losses["commitment"]


def step_theirs(q: nn.Module, z: torch.Tensor) -> torch.Tensor:
    z_q, _, commit = q(z)
    return z_q.square().mean() + commit


def time_once(q: nn.Module, step, z: torch.Tensor) -> float:
    z = z.detach().requires_grad_(True)
    start = time.perf_counter()
    step(q, z).backward()
    return time.perf_counter() - start


def speed(repeats: int = 15, warmup: int = 3) -> dict:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(BATCH, D, GRID, GRID, generator=gen)
    a, b = ours(kmeans=False, restart=0).train(), theirs(kmeans=False).train()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        t_ours, t_theirs = time_once(a, step_ours, z), time_once(b, step_theirs, z)
        if i >= warmup:
            times["ours"].append(t_ours)
            times["theirs"].append(t_theirs)
    med_ours, med_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {
        "vectors": BATCH * GRID * GRID, "K": K, "D": D, "repeats": repeats,
        "ours_ms": round(1e3 * med_ours, 2), "theirs_ms": round(1e3 * med_theirs, 2),
        "ratio_ours_over_theirs": round(med_ours / med_theirs, 3),
    }


class Stream:
    """Batches (B, D, 8, 8) from a mixture of 2K Gaussian clusters whose centres may drift."""

    def __init__(self, drift: float, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.centres = 2.0 * torch.randn(2 * K, D, generator=self.gen)
        self.direction = torch.randn(2 * K, D, generator=self.gen)
        self.drift = drift

    def batch(self, t: float, images: int = 64) -> torch.Tensor:
        which = torch.randint(len(self.centres), (images * 64,), generator=self.gen)
        centres = self.centres[which] + self.drift * t * self.direction[which]
        z = centres + 0.3 * torch.randn(centres.shape, generator=self.gen)
        return z.reshape(images, 8, 8, D).permute(0, 3, 1, 2).contiguous()


def usage_after(make_pair, drift: float, steps: int) -> dict[str, float]:
    """Train each quantizer on the same stream, then report usage on fresh batches from its end."""
    result = {}
    for name, (q, step) in make_pair().items():
        torch.manual_seed(0)
        stream = Stream(drift)
        q.train()
        for i in range(steps):
            step(q, stream.batch(i / steps).requires_grad_(True)).backward()
        q.eval()
        hit = torch.zeros(K, dtype=torch.bool)
        with torch.no_grad():
            for _ in range(4):
                out = q(stream.batch(1.0))
                hit[out[1].flatten()] = True
        result[name] = round(hit.float().mean().item(), 4)
    return result


def usage(steps: int = 300) -> dict:
    def pair(kmeans: bool):
        return lambda: {
            "ours": (ours(kmeans), step_ours),
            "theirs": (theirs(kmeans), step_theirs),
            "theirs_dead_code_2": (theirs(kmeans, dead_threshold=2), step_theirs),
        }

    return {
        "steps": steps, "vectors_per_step": 64 * 64,
        "random_init_stationary": usage_after(pair(kmeans=False), drift=0.0, steps=steps),
        "kmeans_init_drifting": usage_after(pair(kmeans=True), drift=3.0, steps=steps),
    }


def main() -> None:
    record = {
        "bench": "quantizer", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "vector_quantize_pytorch": version("vector-quantize-pytorch"),
        "machine": platform.machine(), "speed": speed(), "usage": usage(),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
