"""Sampling speed on CPU: the KV-cached GPT loop against recomputing the prefix, and images/s.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.sampling

1. The `small` GPT preset (Llama family) on a 16x16 grid (T = 256 tokens, K = 1024, N = 10), the
   same seeds and labels for every variant: dynamic KV cache, static KV cache, and the reference
   that feeds the whole prefix at every step (kv_cache="none"). The cached variants run in
   alternation, medians of the repeats; the reference (minutes on a shared CPU) runs once, between
   them, and the cached tokens must equal its tokens exactly. A cached
   step of a batch this small reads every weight once and is bound by memory bandwidth, so its
   time hardly grows with the batch, while the reference grows with batch x T^2.
2. End to end `sampling.decode.sample` (sample, decode, write PNGs) with the demo prior: the
   trained one under runs/ when a demo run exists, else a random `demo`-preset GPT on the 8x8 grid
   of a random default (`small`) tokenizer.

3. With `--device cuda`: images/s of token generation for 256-token grids at batch 64, without and
   with guidance, the `small` preset in bf16 (the GPU figure of the sampling issue).

Prints one JSON line and writes it to bench/results/sampling.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from core.runs import sha256_file, write_json
from sampling.decode import sample
from sampling.generate import GridSpec, SampleConfig, generate_gpt
from stage1_vqvae.model import VQVAE, VQVAEConfig
from stage2_prior.gpt import build_gpt, count_parameters
from stage2_prior.load import PriorMeta, load_prior, write_prior_meta
from stage2_prior.vocab import PriorVocab

K, N, GRID, BATCH = 1024, 10, 16, 4
RESULT = Path(__file__).parent / "results" / "sampling.json"
RUNS = Path(__file__).parents[1] / "runs"


def time_variants(repeats: int) -> dict:
    """Seconds per batch of BATCH grids for each kv_cache variant, and the tokens check."""
    torch.manual_seed(0)
    model = build_gpt("small", K, N, GRID, GRID).eval()
    spec = GridSpec(PriorVocab(K, N), GRID, GRID)
    labels, indices = torch.arange(BATCH) % N, list(range(BATCH))
    base = SampleConfig(seed=0, top_k=100, top_p=0.95, batch_size=BATCH)
    times: dict[str, list[float]] = {"dynamic": [], "static": [], "none": []}
    codes = {}
    generate_gpt(model, spec, labels, indices, base)  # warm-up
    for r in range(repeats):
        for kind in times:
            if kind == "none" and r != repeats // 2:
                continue
            start = time.perf_counter()
            found = generate_gpt(model, spec, labels, indices, dataclasses.replace(base, kv_cache=kind))
            times[kind].append(time.perf_counter() - start)
            assert torch.equal(found, codes.setdefault(kind, found)), f"{kind}: not deterministic"
    assert torch.equal(codes["dynamic"], codes["none"]) and torch.equal(codes["static"], codes["none"])
    medians = {kind: statistics.median(t) for kind, t in times.items()}
    return {
        "params": count_parameters(model),
        "batch": BATCH,
        "seconds_median": {kind: round(s, 3) for kind, s in medians.items()},
        "speedup_dynamic_vs_recompute": round(medians["none"] / medians["dynamic"], 1),
        "speedup_static_vs_recompute": round(medians["none"] / medians["static"], 1),
        "tokens_equal": True,
    }


def demo_pair(tmp: Path) -> tuple[Path, Path, str]:
    """(prior, tokenizer, what) : a trained demo run if one exists, else random demo-size models."""
    for meta_file in sorted(RUNS.glob("demo*/**/vqgen_prior.json")):
        prior = meta_file.parent
        tokenizer = load_prior(prior).meta.codes_meta.get("tokenizer_path", "")
        if tokenizer and Path(tokenizer).is_dir():
            return prior, Path(tokenizer), f"trained demo run {prior}"
    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig())
    tokenizer.save_pretrained(tmp / "tokenizer")
    config = tokenizer.config
    model = build_gpt("demo", config.codebook_size, 10, config.grid_size, config.grid_size)
    model.save_pretrained(tmp / "prior")
    meta = PriorMeta("gpt", config.codebook_size, config.grid_size, config.grid_size, 10,
                     config.codebook_size + 10, sha256_file(tmp / "tokenizer" / "model.safetensors"), {})
    write_prior_meta(tmp / "prior", meta)
    return tmp / "prior", tmp / "tokenizer", "random demo-preset GPT + random default tokenizer (no demo run)"


def images_per_second(repeats: int, n: int = 128) -> dict:
    """End-to-end images/s of sample() (sample + decode + PNGs), without and with guidance."""
    with tempfile.TemporaryDirectory() as tmp:
        prior, tokenizer, what = demo_pair(Path(tmp))
        result = {"prior": what, "n": n}
        for name, scale in (("images_per_s", 1.0), ("images_per_s_cfg", 3.0)):
            times = []
            for r in range(repeats):
                start = time.perf_counter()
                sample(prior, tokenizer, SampleConfig(n=n, batch_size=64, cfg_scale=scale), Path(tmp) / f"{name}{r}")
                times.append(time.perf_counter() - start)
            result[name] = round(n / statistics.median(times), 1)
        return result


@torch.no_grad()
def batch64_images_per_second(device: str, repeats: int = 3, batch: int = 64) -> dict:
    """Token generation images/s of the `small` GPT on 16x16 grids (256 tokens) at batch 64, without
    and with guidance (which doubles the rows), on `device` in bf16 where it is a GPU."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_gpt("small", K, N, GRID, GRID).eval().to(device, dtype)
    spec = GridSpec(PriorVocab(K, N), GRID, GRID)
    labels, indices = torch.arange(batch) % N, list(range(batch))
    result = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
              "dtype": str(dtype).removeprefix("torch."), "batch": batch, "tokens": GRID * GRID}
    for name, scale in (("images_per_s", 1.0), ("images_per_s_cfg", 3.0)):
        cfg = SampleConfig(seed=0, top_k=100, top_p=0.95, batch_size=batch, cfg_scale=scale)
        generate_gpt(model, spec, labels, indices, cfg)  # warm-up
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            generate_gpt(model, spec, labels, indices, cfg)
            _sync(device)
            times.append(time.perf_counter() - start)
        result[name] = round(batch / statistics.median(times), 1)
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cuda: also time 256-token grids at batch 64 (bf16)")
    args = parser.parse_args()
    # One thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait each other and made
    # a cached decoding step ~7x slower; one thread gives stable figures for every variant.
    torch.set_num_threads(1)
    record = {
        "benchmark": "sampling",
        "setup": {"preset": "small", "family": "llama", "codebook_size": K, "num_classes": N, "grid": [GRID, GRID],
                  "tokens": GRID * GRID, "device": "cpu", "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "machine": platform.machine()},
        "kv_cache": time_variants(repeats=3),
        "demo": images_per_second(repeats=3),
    }
    if args.device != "cpu":
        record["batch64"] = batch64_images_per_second(args.device)
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
