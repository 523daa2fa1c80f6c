"""Peak memory of `dump_codes` at two data-set sizes: it must stay flat as the data set grows.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 .venv/bin/python -m bench.dump_memory

Each size runs in a fresh subprocess that reports its own peak RSS (ru_maxrss) and the RSS just
before the dump (tokenizer and data loaded), so the growth is what dump_codes itself holds. Uses
the "tiny" preset at 32px (a 16x16 grid, 256 codes per image): memory behaviour depends on the rows
written, not on the network. Prints one JSON line and writes bench/results/dump_memory.json.
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

from vqgen.runs import write_json

RESULT = Path(__file__).parent / "results" / "dump_memory.json"
SIZES = (6_000, 60_000)


def child(n: int, workdir: Path) -> dict:
    from stage1_vqvae.codes import dump_codes
    from stage1_vqvae.model import PRESETS, VQVAE, VQVAEConfig
    from vqgen.data import DataConfig, load_images

    torch.manual_seed(0)
    VQVAE(VQVAEConfig(**PRESETS["tiny"])).save_pretrained(workdir / "tok")
    data = DataConfig(max_images=n)
    load_images(data, "train")  # the source's pixels are cached by the OS either way; count them in the base
    base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    dump_codes(workdir / "tok", data, workdir / "codes", splits=("train",), batch_size=256)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"images": n, "rss_before_mib": round(base / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1),
            "growth_mib": round((peak - base) / 2**20, 1), "dump_s": round(wall, 1)}


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
    record = {"benchmark": "dump_memory", "setup": {"preset": "tiny", "image_size": 32, "grid": [16, 16],
                                                    "codebook_size": 64, "torch": torch.__version__},
              "runs": runs, "peak_ratio_large_over_small": round(runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3)}
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
