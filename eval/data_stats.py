"""Inception statistics of the first N images of a data split (a reference, the real-data floor, the
originals of rFID): computed, or read from the statistics cache (eval/cache.py).

The cache key is everything the statistics depend on: the data settings (the spec and every `data:`
setting, image size and channels as loaded included), the split, N, the weight file's hash and input
convention, and a sha256 of the N images' pixels exactly as Inception is fed them. The pixel hash
keeps an edited image folder (or a changed hub data set) from being served stale statistics; it
decodes the N images once, seconds where Inception takes minutes on a CPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from core.data import DataConfig, ImageDataset, load_images
from core.pixels import to_uint8
from eval.cache import KEY_VERSION, StatsCache
from eval.inception import InceptionFeatures, WeightSource, extract_features
from eval.reference import RefStats
from eval.samples import check_available, check_count
from eval.scores import stats_of

BATCH_SIZE = 50  # pytorch-fid's default

Network = Callable[[], InceptionFeatures]  # the network, loaded on the first call only


def data_batches(
    dataset: Dataset, n: int = 0, labels: list[int] | None = None, batch_size: int = BATCH_SIZE
) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) batches of the first n images (0: all) of a `load_images` split; their
    labels are appended to `labels` on the way (the class balance of a reference)."""
    if n:
        dataset = Subset(dataset, range(min(n, len(dataset))))
    for batch in DataLoader(dataset, batch_size=batch_size):
        if labels is not None:
            labels.extend(batch["label"].tolist())
        yield to_uint8(batch["image"])


def reference_split(data: DataConfig, split: str, n: int = 0) -> ImageDataset:
    """The split whose first n (0: all) images make a reference, refused when it has too few."""
    check_count(n, "reference images")
    dataset = load_images(data, split)
    capped = f", data.max_images={data.max_images}" if data.max_images else ""
    check_available(n, len(dataset), f"data '{data.spec}' ({split} split{capped})")
    return dataset


def protocol(source: WeightSource) -> dict[str, Any]:
    return {"network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_source": source.kind,
            "weights_path": str(source.path), "weights_sha": source.sha, "resize": source.resize}


def data_settings(dataset: ImageDataset) -> dict[str, Any]:
    """The split's data settings, with the channel count as loaded (samples are checked against it)."""
    return asdict(replace(dataset.cfg, channels=dataset.channels))


def reference_stats(model: InceptionFeatures, dataset: ImageDataset, n: int = 0) -> RefStats:
    """Inception statistics of the first n (0: all) images of a `reference_split`, with the protocol
    and the data settings."""
    labels: list[int] = []
    total = n or len(dataset)
    extracted = extract_features(model, data_batches(dataset, n, labels), total, desc=f"{dataset.split} split")
    counts = np.bincount(labels, minlength=dataset.num_classes).tolist() if dataset.num_classes else None
    meta = {**protocol(model.weights), "n": total, "data": data_settings(dataset), "split": dataset.split,
            "class_counts": counts}
    return stats_of(extracted.features, meta, extracted.spatial)


def pixels_sha256(dataset: ImageDataset, n: int = 0) -> str:
    """sha256 of the first n (0: all) images, as the uint8 batches Inception is fed."""
    digest = hashlib.sha256()
    for images in data_batches(dataset, n):
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.numpy().tobytes())
    return digest.hexdigest()


def stats_key(dataset: ImageDataset, n: int, source: WeightSource) -> dict[str, Any]:
    """What the statistics of the first n (0: all) images of `dataset` depend on (see the module doc)."""
    return {"version": KEY_VERSION, "data": data_settings(dataset), "split": dataset.split,
            "n": n or len(dataset), "weights": {"kind": source.kind, "sha": source.sha, "resize": source.resize},
            "pixels_sha256": pixels_sha256(dataset, n)}


def split_stats(network: Network, source: WeightSource, dataset: ImageDataset, n: int = 0,
                cache: StatsCache | None = None) -> RefStats:
    """`reference_stats` of the first n (0: all) images of `dataset`, from `cache` when it holds them
    (the network is then not even loaded), else computed and stored there."""
    if cache is None:
        return reference_stats(network(), dataset, n)
    key = stats_key(dataset, n, source)
    stats = cache.load(key)
    if stats is None:
        stats = reference_stats(network(), dataset, n)
        cache.store(key, stats)
    stats.meta.update(protocol(source))  # the weight file may sit elsewhere now (same hash)
    return stats
