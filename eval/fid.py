"""FID and KID (and IS where the network has logits) of a folder of samples against reference statistics.

A reference (eval/reference.py) is an `.npz` of `mu`/`sigma` (and `features` for KID) with a JSON
sidecar recording the protocol, or a data spec scored on the spot. A third-party `.npz` gives FID
from its `mu`/`sigma`, and KID is reported unavailable. The Frechet distance is the closed form on
mu/sigma; KID and IS are torchmetrics' (`KernelInceptionDistance`, `InceptionScore`), fed features
that Inception computed once.

Everything a user can get wrong is checked before Inception runs: the samples in one cheap pass
(eval/samples.py), the reference file's arrays, the protocol it was made with and the image format
it was made at, the number of images on each side, and the output path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from eval.inception import (
    InceptionFeatures,
    WeightSource,
    extract_features,
    find_weights,
    inception_score_unavailable,
)
from eval.reference import RefStats, claim_ref_out, load_ref, save_ref
from eval.samples import (
    ImageFormat,
    SampleFolder,
    check_available,
    check_count,
    check_reference_format,
)
from vqgen.config import apply
from vqgen.data import DataConfig, ImageDataset, load_images
from vqgen.errors import VqgenError
from vqgen.pixels import to_uint8

logger = logging.getLogger(__name__)

BATCH_SIZE = 50  # pytorch-fid's default
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # Binkowski et al. (2018), as torchmetrics and torch-fidelity
KID_MIN_IMAGES = 4  # the unbiased estimator needs two images per subset on each side


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


def stats_of(features: torch.Tensor, meta: dict[str, Any]) -> RefStats:
    f = features.double().numpy()
    return RefStats(f.mean(0), np.cov(f, rowvar=False), features.float().numpy(), meta)


def protocol(model: InceptionFeatures) -> dict[str, Any]:
    return {"network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_source": model.source,
            "weights_path": str(model.weights.path), "weights_sha": model.sha, "resize": model.resize}


def folder_batches(root: str | Path, n: int = 0, batch_size: int = BATCH_SIZE) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) batches of the first n (0: all) images under `root`, checked first."""
    return SampleFolder(root, n).batches(batch_size)


def reference_split(data: DataConfig, split: str, n: int = 0) -> ImageDataset:
    """The split whose first n (0: all) images make a reference, refused when it has too few."""
    check_count(n, "reference images")
    dataset = load_images(data, split)
    capped = f", data.max_images={data.max_images}" if data.max_images else ""
    check_available(n, len(dataset), f"data '{data.spec}' ({split} split{capped})")
    return dataset


def reference_stats(model: InceptionFeatures, dataset: ImageDataset, n: int = 0) -> RefStats:
    """Inception statistics of the first n (0: all) images of a `reference_split`, with the protocol
    and the data settings (channels as loaded, so that samples can be checked against them)."""
    labels: list[int] = []
    total = n or len(dataset)
    extracted = extract_features(model, data_batches(dataset, n, labels), total, desc=f"reference {dataset.split}")
    counts = np.bincount(labels, minlength=dataset.num_classes).tolist() if dataset.num_classes else None
    data = asdict(replace(dataset.cfg, channels=dataset.channels))
    meta = {**protocol(model), "n": total, "data": data, "split": dataset.split, "class_counts": counts}
    return stats_of(extracted.features, meta)


def fid_ref(
    data: DataConfig, split: str, out: str | Path, weights: str | Path | None = None, n: int = 0
) -> RefStats:
    """`vqgen fid-ref`: statistics of `split` written to `out` (.npz) and its .json sidecar. The
    output (checked, then locked) and the split are checked before Inception loads."""
    with claim_ref_out(out):
        dataset = reference_split(data, split, n)
        stats = reference_stats(InceptionFeatures(weights), dataset, n)
        save_ref(out, stats)
    logger.info("wrote %s (%d %s images of %s)", out, stats.meta["n"], split, data.spec)
    return stats


class _Precomputed(nn.Module):
    """Hands already-extracted features to a torchmetrics metric, so Inception runs once for
    FID, KID and IS together (each metric would otherwise run its own copy of the network)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(ref: RefStats, features: torch.Tensor) -> float:
    """FID of features (N, F) against reference mu/sigma: |mu_r - mu|^2 + tr(S_r + S - 2 (S_r S)^1/2),
    the trace of the root taken as the sum of the roots of the eigenvalues of S_r S (torchmetrics'
    eigenvalue form, finite where scipy's sqrtm of a singular product is not)."""
    # Written out: torchmetrics keeps this closed form private behind a metric that wants both
    # sides' raw features, and a reference (pytorch-fid's, ADM's) may hold only mu and sigma.
    fake = stats_of(features, {})
    mu_r, sigma_r, mu, sigma = (torch.from_numpy(x) for x in (ref.mu, ref.sigma, fake.mu, fake.sigma))
    root_trace = torch.linalg.eigvals(sigma_r @ sigma).sqrt().real.sum()
    return float((mu_r - mu).square().sum() + sigma_r.trace() + sigma.trace() - 2 * root_trace)


def kernel_distance(ref_features: torch.Tensor, features: torch.Tensor, seed: int = 0,
                    subset_size: int | None = None) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with the kernel (x.y/F + 1)^3.

    Subsets hold 1000 images, or half the smaller set when it has fewer than 2000: subsets as large
    as the set are all the same set, and their std (0) would say nothing about the estimate's spread.
    """
    size = subset_size or min(KID_SUBSET_SIZE, len(ref_features) // 2, len(features) // 2)
    metric = KernelInceptionDistance(feature=_Precomputed(features.shape[1]), subsets=KID_SUBSETS, subset_size=size)
    metric.update(ref_features.double(), real=True)
    metric.update(features.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kid(stats: RefStats, features: torch.Tensor, ref: str | Path) -> dict[str, Any]:
    """kid_mean/kid_std, or a `kid` line saying why not: the unbiased estimator needs two images
    per subset on each side (one would divide by m(m-1) = 0)."""
    if stats.features is None:
        return {"kid": f"KID: unavailable ({ref} holds only mu/sigma, no reference features)"}
    if min(len(stats.features), len(features)) < KID_MIN_IMAGES:
        return {"kid": f"KID: unavailable ({len(stats.features)} reference and {len(features)} sample images; "
                       f"needs at least {KID_MIN_IMAGES} of each)"}
    mean, std = kernel_distance(torch.from_numpy(stats.features), features)
    return {"kid_mean": mean, "kid_std": std}


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS (mean, std over splits) of logits (N, 1008), Salimans et al. (2016)."""
    metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):  # torchmetrics shuffles before splitting
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def prepare_ref(
    ref: str | Path, source: WeightSource, fmt: ImageFormat, n: int = 0, data: dict[str, Any] | None = None
) -> Callable[[InceptionFeatures], RefStats]:
    """Check the reference before any Inception work; return what gives its statistics once the
    network is loaded. `ref` is an .npz (read and checked now: arrays, protocol, image format), or a
    data SPEC whose first n test images are scored then (nothing written), loaded at the samples'
    image size and channels unless `data` (the --data.* settings) names them."""
    if str(ref).endswith(".npz") or Path(ref).is_file():
        if data:
            raise VqgenError(f"--data.{next(iter(data))}: --data.* settings apply to a --ref data spec, and {ref} "
                             "is a statistics file; drop them or make the file again with `vqgen fid-ref --data.*`")
        stats = load_ref(ref)
        check_protocol(stats.meta, source, ref)
        made_at = stats.meta.get("data", {})
        check_reference_format(fmt, made_at.get("image_size"), made_at.get("channels"), str(ref),
                               f"make the reference at the samples' format (vqgen fid-ref --data.image_size="
                               f"{fmt.height} --data.channels={fmt.channels}), or pass --ref SPEC")
        return lambda _: stats
    dataset = reference_split(ref_data_config(str(ref), fmt, data), "test", n)
    return lambda model: reference_stats(model, dataset, n)


def ref_data_config(spec: str, fmt: ImageFormat, data: dict[str, Any] | None = None) -> DataConfig:
    """The DataConfig of a --ref SPEC. DataConfig's default 32 px would score 64-px samples against
    32-px references without a word, so size and channels come from the samples unless given."""
    data = data or {}
    if fmt.height != fmt.width and "image_size" not in data:
        raise VqgenError(f"samples are {fmt.width}x{fmt.height}, references are square; pass --data.image_size=N "
                         "or score against a .npz from `vqgen fid-ref`")
    values = {"image_size": fmt.height, "channels": fmt.channels, **data, "spec": spec}
    return apply(DataConfig(), values, source="vqgen fid --data.*")


def check_protocol(meta: dict[str, Any], source: WeightSource, ref: str | Path) -> None:
    if not meta:
        logger.warning("%s: no JSON sidecar; assuming it was made with the same network, resize and image size", ref)
        return
    if meta.get("weights_sha") != source.sha or meta.get("resize") != source.resize:
        raise VqgenError(
            f"{ref}: made with {meta.get('weights_source')} ({meta.get('resize')}), samples would be scored "
            f"with {source.kind} ({source.resize}); pass the same --inception-weights as for fid-ref"
        )


def fid(
    samples_dir: str | Path, ref: str | Path, n: int = 0, weights: str | Path | None = None, n_ref: int = 0,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`vqgen fid`: FID, KID and IS (or why not) of the first n (0: all) images in `samples_dir`
    against `ref` (an .npz, or a data SPEC whose first n_ref test images are scored now, with the
    DataConfig settings `data` over the samples' own size and channels). Samples and reference are
    checked before the network loads."""
    samples = SampleFolder(samples_dir, n)
    source = find_weights(weights)
    ref_stats = prepare_ref(ref, source, samples.format, n_ref, data)
    model = InceptionFeatures(source)
    stats = ref_stats(model)
    extracted = extract_features(model, samples.batches(BATCH_SIZE), len(samples), desc="samples")
    result: dict[str, Any] = {**protocol(model), "n_samples": len(samples), "samples": str(samples_dir),
                              "reference": str(ref), "reference_meta": stats.meta,
                              "fid": frechet_distance(stats, extracted.features)}
    result.update(_kid(stats, extracted.features, ref))
    if extracted.logits is None:
        result["is"] = inception_score_unavailable(model.source)
    else:
        result["is_mean"], result["is_std"] = inception_score(extracted.logits)
    return result
