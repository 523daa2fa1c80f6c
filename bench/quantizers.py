"""Our FSQ and LFQ against vector_quantize_pytorch's `FSQ` and `LFQ`, measured in the same run.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 OMP_NUM_THREADS=1 .venv/bin/python -m bench.quantizers

1. Speed: forward + backward of (||z_q||^2 + the quantizer's losses) on 16,384 vectors (16 x 32 x 32),
   in training mode, on CPU, with the same settings and the same projection weights in both:
   - FSQ, levels [8, 5, 5, 5] (K = 1,000): D = 64 projected to 4 dims, and D = 4 (no projection);
   - LFQ, 10 bits (K = 1,024), commitment 0.25, entropy weight 0.1, T = 0.01 (their
     inv_temperature 100): D = 64 projected to 10 dims, and D = 10. With 10 bits our codebook
     entropy is exact (one group), so both compute the same loss.
   Ours includes its usage and perplexity meters, which theirs does not have. The two are timed in
   alternation, several repeats after a warm-up, and the medians compared (target: ratio <= 1.0).
2. Codes: FSQ on the same inputs (random, scaled random, and a sweep across every rounding
   boundary) must give their codes exactly; LFQ's codes are compared too.

Prints one JSON line and writes it to bench/results/quantizers.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, LFQ

from core.runs import write_json
from stage1_vqvae.quantizers import build_quantizer, quantizer_settings

BATCH, GRID = 16, 32  # 16 * 32 * 32 = 16,384 vectors
LEVELS, BITS, BETA, ENTROPY_WEIGHT, TEMPERATURE = [8, 5, 5, 5], 10, 0.25, 0.1, 0.01
RESULT = Path(__file__).parent / "results" / "quantizers.json"


def same_projections(ours: nn.Module, theirs: nn.Module) -> None:
    if isinstance(ours.project_in, nn.Linear):
        theirs.project_in.load_state_dict(ours.project_in.state_dict())
        theirs.project_out.load_state_dict(ours.project_out.state_dict())


def fsq_pair(dim: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = build_quantizer(quantizer_settings({"kind": "fsq", "levels": LEVELS}), dim)
    theirs = FSQ(LEVELS, dim=dim)
    same_projections(ours, theirs)
    return ours, theirs


def lfq_pair(dim: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    settings = {"kind": "lfq", "bits": BITS, "beta": BETA, "entropy_weight": ENTROPY_WEIGHT,
                "entropy_temperature": TEMPERATURE}
    ours = build_quantizer(quantizer_settings(settings), dim)
    theirs = LFQ(dim=dim, codebook_size=2**BITS, commitment_loss_weight=BETA, entropy_loss_weight=ENTROPY_WEIGHT)
    same_projections(ours, theirs)
    return ours, theirs


def loss_ours(q: nn.Module, z: Tensor) -> Tensor:
    out = q(z)
    return out.z_q.square().mean() + sum(out.losses.values(), torch.zeros(()))


def loss_theirs_fsq(q: nn.Module, z: Tensor) -> Tensor:
    return q(z)[0].square().mean()


def loss_theirs_lfq(q: nn.Module, z: Tensor) -> Tensor:
    out = q(z, inv_temperature=1 / TEMPERATURE)
    return out.quantized.square().mean() + out.entropy_aux_loss


def time_once(q: nn.Module, loss: Callable, z: Tensor) -> float:
    z = z.detach().requires_grad_(True)
    start = time.perf_counter()
    loss(q, z).backward()
    return time.perf_counter() - start


def speed(pair: tuple[nn.Module, nn.Module], theirs_loss: Callable, dim: int, repeats: int = 21,
          warmup: int = 3) -> dict:
    z = torch.randn(BATCH, dim, GRID, GRID, generator=torch.Generator().manual_seed(1))
    ours, theirs = (q.train() for q in pair)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        # Alternate who goes first, so that neither always runs on a cache the other warmed.
        order = [("ours", ours, loss_ours), ("theirs", theirs, theirs_loss)]
        for name, q, loss in order if i % 2 == 0 else order[::-1]:
            elapsed = time_once(q, loss, z)
            if i >= warmup:
                times[name].append(elapsed)
    med_ours, med_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {"D": dim, "ours_ms": round(1e3 * med_ours, 2), "theirs_ms": round(1e3 * med_theirs, 2),
            "ratio_ours_over_theirs": round(med_ours / med_theirs, 3)}


@torch.no_grad()
def same_codes() -> dict:
    """Codes of ours and theirs on the same inputs, in eval mode, no projections."""
    gen = torch.Generator().manual_seed(2)
    sweep = torch.linspace(-6, 6, 100_001)
    result = {}
    for name, d, (ours, theirs) in (("fsq", len(LEVELS), fsq_pair(len(LEVELS))), ("lfq", BITS, lfq_pair(BITS))):
        inputs = [torch.randn(BATCH, d, GRID, GRID, generator=gen), 5 * torch.randn(BATCH, d, GRID, GRID, generator=gen),
                  sweep.view(1, 1, -1, 1).expand(1, d, -1, 1).contiguous()]
        ours.eval()
        theirs.eval()
        equal, total = 0, 0
        for z in inputs:
            mine, their = ours(z).indices, theirs(z).indices if name == "lfq" else theirs(z)[1]
            equal += int((mine == their.long()).sum())
            total += mine.numel()
        result[name] = {"vectors": total, "equal_codes": equal, "all_equal": equal == total}
    return result


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()[0]
    record = {
        "bench": "quantizers", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "vector_quantize_pytorch": version("vector-quantize-pytorch"), "machine": platform.machine(),
        "vectors": BATCH * GRID * GRID,
        "fsq": {"levels": LEVELS, "K": 1000,
                "projected": speed(fsq_pair(64), loss_theirs_fsq, 64),
                "unprojected": speed(fsq_pair(len(LEVELS)), loss_theirs_fsq, len(LEVELS))},
        "lfq": {"bits": BITS, "K": 2**BITS, "temperature": TEMPERATURE,
                "projected": speed(lfq_pair(64), loss_theirs_lfq, 64, repeats=9),
                "unprojected": speed(lfq_pair(BITS), loss_theirs_lfq, BITS, repeats=9)},
        "codes": same_codes(),
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
