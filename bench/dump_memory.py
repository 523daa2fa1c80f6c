"""Memory of `dump_codes` at two data-set sizes: what the dump adds must stay flat as the data grows.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.dump_memory

Each size runs in a fresh subprocess. It records the baseline RSS just before the dump (Python,
torch, datasets, the tokenizer and the loaded split: about 1 GiB whatever the size) and its peak RSS
(ru_maxrss); the increment, peak minus baseline, is what dump_codes itself holds. The sizes are 10%
and all of Fashion-MNIST's 57,000-image train split (the other 3,000 of its 60,000 images are val), and
the figure to read is the ratio of the two increments: near 1 means flat. A ratio of peaks would
mostly compare the two baselines. Uses the "tiny" preset at 32px (a 16x16 grid, 256 codes per image):
memory behaviour depends on the rows written, not on the network. Prints one JSON line and writes
bench/results/dump_memory.json.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from core.runs import write_json

RESULT = Path(__file__).parent / "results" / "dump_memory.json"
SIZES = (5_700, 57_000)  # 10% and 100% of the Fashion-MNIST train split


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def rss_parts() -> dict:
    """Current anonymous and file-backed RSS (Linux), to tell memory the process still holds from
    mapped files (libraries, memory-mapped Arrow pages), which the kernel can drop."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {f"{key.lower()}_after_mib": mib(int(fields[key].split()[0]) * 1024) for key in ("RssAnon", "RssFile")
            if key in fields}


def child(n: int, workdir: Path) -> dict:
    from core.data import DataConfig, load_images
    from stage1_vqvae.codes import dump_codes
    from stage1_vqvae.model import PRESETS, VQVAE, VQVAEConfig

    torch.manual_seed(0)
    VQVAE(VQVAEConfig(**PRESETS["tiny"])).save_pretrained(workdir / "tok")
    data = DataConfig(max_images=n)
    available = len(load_images(data, "train"))  # the source's pixels stay loaded: count them in the baseline
    if available != n:
        raise SystemExit(f"bench.dump_memory: the train split holds {available} images, not {n}; fix SIZES")
    base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    dump_codes(workdir / "tok", data, workdir / "codes", splits=("train",), batch_size=256)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"images": n, "baseline_rss_mib": mib(base), "peak_rss_mib": mib(peak),
            "increment_mib": mib(peak - base), "dump_s": round(wall, 1)} | rss_parts()


def main() -> None:
    if "--child" in sys.argv:
        n, workdir = int(sys.argv[sys.argv.index("--child") + 1]), Path(sys.argv[-1])
        print(json.dumps(child(n, workdir)))
        return
    runs = []
    for n in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-m", "bench.dump_memory", "--child", str(n), tmp],
                                  capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs
    record = {"benchmark": "dump_memory", "setup": {"preset": "tiny", "image_size": 32, "grid": [16, 16],
                                                    "codebook_size": 64, "torch": torch.__version__},
              "runs": runs, "images_ratio": large["images"] / small["images"],
              "increment_ratio_large_over_small": round(large["increment_mib"] / max(small["increment_mib"], 0.1), 3)}
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
