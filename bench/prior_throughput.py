"""Training throughput of the priors: code tokens per second of one optimizer step.

    OMP_NUM_THREADS=1 python -m bench.prior_throughput                       # CPU, the five default models
    python -m bench.prior_throughput --device cuda --bf16 --models gpt-llama-small,gpt-llama-base

One step = teacher-forced forward over a batch of random 16x16 grids (K=1024, N=10 classes),
cross-entropy, backward, AdamW. The models are timed in alternation (round-robin), several repeats
after a warm-up, and medians reported, so machine load affects them alike. `--bf16` runs the forward
pass under bf16 autocast (the weights and AdamW stay fp32, as `mixed_precision=bf16` in training).

Prints one JSON line and writes it to bench/results/prior_throughput.json, or, for another device or
bf16, to prior_throughput-<device>[-bf16].json (`--out` chooses the file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from core.runs import write_json
from stage2_prior.gpt import build_gpt, count_parameters
from stage2_prior.pixelcnn import build_pixelcnn
from stage2_prior.registry import prior_kind
from stage2_prior.vocab import PriorVocab

K, N, GRID, BATCH = 1024, 10, 16, 8
RESULTS = Path(__file__).parent / "results"
MODELS = {
    "gpt-llama-tiny": ("gpt", lambda: build_gpt("tiny", K, N, GRID, GRID)),
    "gpt-gpt2-tiny": ("gpt", lambda: build_gpt("tiny", K, N, GRID, GRID, family="gpt2")),
    "gpt-llama-small": ("gpt", lambda: build_gpt("small", K, N, GRID, GRID)),
    "pixelcnn-tiny": ("pixelcnn", lambda: build_pixelcnn("tiny", K, N, GRID, GRID)),
    "pixelcnn-small": ("pixelcnn", lambda: build_pixelcnn("small", K, N, GRID, GRID)),
}
# Too slow to be in the CPU default; asked for by name (the GPU figure: `small` and `base` with bf16).
EXTRA_MODELS = {
    "gpt-llama-base": ("gpt", lambda: build_gpt("base", K, N, GRID, GRID)),
    "pixelcnn-base": ("pixelcnn", lambda: build_pixelcnn("base", K, N, GRID, GRID)),
}


def train_step(model, optimizer, arch: str, codes: torch.Tensor, index: torch.Tensor, bf16: bool = False) -> float:
    device = codes.device
    _sync(device)
    start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        logits = prior_kind(arch).objective.logits(model, PriorVocab(K, N), codes, index)
    loss = F.cross_entropy(rearrange(logits.float(), "b t k -> (b t) k"), codes.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: the clock is read only after they finish.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    names: list[str] | None = None, repeats: int = 7, warmup: int = 2, device: str = "cpu", bf16: bool = False,
    batch: int = BATCH,
) -> dict:
    names = names or list(MODELS)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (batch, GRID, GRID), generator=gen).to(device)
    index = torch.randint(0, N + 1, (batch,), generator=gen).to(device)
    torch.manual_seed(0)
    registry = MODELS | EXTRA_MODELS
    built = {name: (registry[name][0], registry[name][1]().to(device).train()) for name in names}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (_, model) in built.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    for i in range(warmup + repeats):
        for name, (arch, model) in built.items():
            elapsed = train_step(model, optimizers[name], arch, codes, index, bf16)
            if i >= warmup:
                times[name].append(elapsed)
    tokens = batch * GRID * GRID
    return {
        name: {
            "params": count_parameters(model),
            "step_s_median": round(statistics.median(times[name]), 4),
            "tokens_per_s": round(tokens / statistics.median(times[name])),
        }
        for name, (_, model) in built.items()
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS | EXTRA_MODELS)}")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"grids per step (default {BATCH})")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per model, after 2 warm-up steps")
    parser.add_argument("--out", type=Path, help="result file (default: bench/results/prior_throughput*.json)")
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(MODELS | EXTRA_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS | EXTRA_MODELS)}")
    return args


def main() -> None:
    args = _arguments()
    default_setup = args.device == "cpu" and not args.bf16
    setup = {"codebook_size": K, "num_classes": N, "grid": [GRID, GRID], "batch": args.batch, "device": args.device,
             "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    if args.bf16:
        setup["autocast"] = "bf16"
    if torch.device(args.device).type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    models = measure(args.models.split(","), repeats=args.repeats, device=args.device, bf16=args.bf16,
                     batch=args.batch)
    record = {"benchmark": "prior_throughput", "setup": setup, "models": models}
    suffix = "" if default_setup else f"-{args.device.replace(':', '')}{'-bf16' if args.bf16 else ''}"
    write_json(args.out or RESULTS / f"prior_throughput{suffix}.json", record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
