"""The real-data floor: N real images of another split of the reference's data set, scored against the
same reference by the same `scores` as the N samples.

A FID on N samples is biased upwards by an amount that depends on N and on the data (Chong & Forsyth
2020), and precision and recall depend on N too; what real images score at the same N says how far
a model's numbers are from the best any generator could get there. The reference's data must be
known: a --ref SPEC, the pipeline's data, or an `.npz` whose sidecar records its data settings (ours
do). The floor's statistics are cached like the reference's (eval/data_stats.py). Where there is no
floor, its entry is one line saying why; it never stops the scoring of the samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.data import DataConfig, load_images
from core.errors import VqgenError
from eval.cache import StatsCache
from eval.data_stats import Network, split_stats
from eval.inception import WeightSource
from eval.reference import RefStats
from eval.scores import scores

# Another split than the reference's: train, or for a train reference test. Where a source stores
# no val or test split, vqgen cuts them from train and train is what is left (core/data/splits.py).
FLOOR_SPLIT = {"test": "train", "val": "train", "train": "test"}

Floor = Callable[[Network, RefStats], dict[str, Any] | str]


def unavailable(why: str) -> Floor:
    return lambda network, ref: f"real data: unavailable ({why})"


def prepare_floor(data: DataConfig | None, ref_split: str, ref_name: str, n: int, source: WeightSource,
                  cache: StatsCache | None = None, why_not: str = "") -> Floor:
    """Load the floor's split of `data` now, before any Inception work; return what scores its first n
    images against the reference `ref_name` (a `ref_split` split) once the network is there, or says
    why there is no floor (`why_not` where `data` is None)."""
    if data is None or ref_split not in FLOOR_SPLIT:
        return unavailable(why_not or f"the reference split '{ref_split}' is unknown")
    split = FLOOR_SPLIT[ref_split]
    try:
        dataset = load_images(data, split)
    except VqgenError as err:
        return unavailable(str(err))
    if len(dataset) < n:
        return unavailable(f"data '{data.spec}' has {len(dataset)} {split} images, fewer than the N = {n} samples")

    def floor(network: Network, ref: RefStats) -> dict[str, Any]:
        stats = split_stats(network, source, dataset, n, cache)
        return {"split": split, "n": n, **scores(ref, stats, ref_name)}

    return floor
