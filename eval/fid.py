"""FID and KID (and IS where the network has logits) of a folder of samples against reference statistics.

A reference is an `.npz` with `mu` (2048,) and `sigma` (2048, 2048) float64, the keys pytorch-fid
writes and reads, plus `features` (N, 2048) float32 for KID; a JSON sidecar (`stats.json` next to
`stats.npz`) records the protocol. A third-party `.npz` gives FID from its `mu`/`sigma` (an ADM
reference batch's too: its `arr_0` images and `mu_s`/`sigma_s` are never read), and KID is reported
unavailable. The Frechet distance and the KID estimator are torchmetrics' own
(`FrechetInceptionDistance`, `KernelInceptionDistance`), fed features that Inception computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from eval.inception import InceptionFeatures, extract_features, inception_score_unavailable
from vqgen.config import apply
from vqgen.data import IMAGE_SUFFIXES, DataConfig, load_images
from vqgen.errors import VqgenError
from vqgen.runs import atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

BATCH_SIZE = 50  # pytorch-fid's default
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # Binkowski et al. (2018), as torchmetrics and torch-fidelity


@dataclass
class RefStats:
    """Reference statistics: mu (F,), sigma (F, F) float64; features (N, F) float32 or None."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1] -> uint8 in [0, 255], as a PNG writer would store them."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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


class ImageFolder(Dataset):
    """A folder of sample images (one file per image), read as uint8 (3, H, W)."""

    def __init__(self, root: str | Path, n: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise VqgenError(f"{root}: samples folder not found; pass the folder `vqgen sample` wrote")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise VqgenError(f"{root}: no images found; pass a folder of PNG samples")
        if n and n > len(self.paths):
            raise VqgenError(f"{root}: --n {n} asks for more than the {len(self.paths)} images there")
        self.paths = self.paths[:n] if n else self.paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            array = np.asarray(im.convert("RGB"))  # grayscale is repeated to 3 channels
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def folder_batches(root: str | Path, n: int = 0, batch_size: int = BATCH_SIZE) -> Iterator[torch.Tensor]:
    images = ImageFolder(root, n)
    try:
        yield from DataLoader(images, batch_size=batch_size)
    except RuntimeError as err:  # default_collate on images of different sizes
        raise VqgenError(f"{root}: images differ in size ({str(err)[:120]}); score one resolution at a time") from None


def stats_of(features: torch.Tensor, meta: dict[str, Any]) -> RefStats:
    f = features.double().numpy()
    return RefStats(f.mean(0), np.cov(f, rowvar=False), features.float().numpy(), meta)


def save_ref(path: str | Path, stats: RefStats) -> None:
    """`path` (.npz) with mu, sigma (and features), and `path.json` beside it with the protocol."""
    path = Path(path)
    arrays = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        arrays["features"] = stats.features
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
            np.savez(f, **arrays)
    write_json(path.with_suffix(".json"), stats.meta)


def load_ref(path: str | Path) -> RefStats:
    """Our `.npz` or a third-party one (pytorch-fid, ADM) holding at least `mu` and `sigma`.
    Only `mu`, `sigma` and `features` are read: an ADM reference batch also holds ~2 GB of images."""
    path = Path(path)
    if not path.is_file():
        raise VqgenError(f"{path}: reference statistics not found; make them with `vqgen fid-ref`")
    try:
        with np.load(path, allow_pickle=False) as npz:  # lazy: an array is read when it is indexed
            if "mu" not in npz.files or "sigma" not in npz.files:
                raise VqgenError(f"{path}: has keys {sorted(npz.files)}, needs 'mu' and 'sigma'; "
                                 "make it with `vqgen fid-ref`")
            arrays = {k: npz[k] for k in ("mu", "sigma", "features") if k in npz.files}
    except (OSError, ValueError) as err:
        raise VqgenError(f"{path}: not a readable .npz ({err}); make it with `vqgen fid-ref`") from None
    sidecar = path.with_suffix(".json")
    meta = read_json(sidecar, "reference sidecar") if sidecar.is_file() else {}
    return RefStats(arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64), arrays.get("features"), meta)


def protocol(model: InceptionFeatures) -> dict[str, Any]:
    return {"network": "TF Inception 2015-12-05 pool3 (2048-d)", "weights_source": model.source,
            "weights_path": str(model.weights.path), "weights_sha": model.sha, "resize": model.resize}


def reference_stats(model: InceptionFeatures, data: DataConfig, split: str, n: int = 0) -> RefStats:
    """Inception statistics of the first n (0: all) images of a data split, with the protocol."""
    dataset, labels = load_images(data, split), []
    total = min(n, len(dataset)) if n else len(dataset)
    extracted = extract_features(model, data_batches(dataset, n, labels), total, desc=f"reference {split}")
    counts = np.bincount(labels, minlength=dataset.num_classes).tolist() if dataset.num_classes else None
    meta = {**protocol(model), "n": total, "data": asdict(data), "split": split, "class_counts": counts}
    return stats_of(extracted.features, meta)


def fid_ref(
    data: DataConfig, split: str, out: str | Path, weights: str | Path | None = None, n: int = 0
) -> RefStats:
    """`vqgen fid-ref`: statistics of `split` written to `out` (.npz) and its .json sidecar."""
    stats = reference_stats(InceptionFeatures(weights), data, split, n)
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
    """FID of features (N, F) against reference mu/sigma (torchmetrics' eigenvalue form)."""
    n_ref = int(ref.meta.get("n", 2)) if ref.features is None else len(ref.features)
    metric = FrechetInceptionDistance(feature=_Precomputed(features.shape[1]))
    mu = torch.from_numpy(ref.mu)
    # torchmetrics keeps running sums; these sums give back exactly mu and sigma for any n_ref >= 2.
    metric.real_features_sum = mu * n_ref
    metric.real_features_cov_sum = torch.from_numpy(ref.sigma) * (n_ref - 1) + n_ref * torch.outer(mu, mu)
    metric.real_features_num_samples = torch.tensor(n_ref)
    metric.update(features.double(), real=False)
    return float(metric.compute())


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
    if min(len(stats.features), len(features)) < 4:
        return {"kid": f"KID: unavailable ({len(stats.features)} reference and {len(features)} sample images; "
                       "needs at least 4 of each)"}
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


def resolve_ref(
    ref: str | Path, model: InceptionFeatures, first_sample: Path, n: int = 0, data: dict[str, Any] | None = None
) -> RefStats:
    """An .npz path, or a data SPEC whose test split is scored now (nothing written), loaded with
    the samples' image size and channels unless `data` (the --data.* settings) names them."""
    if str(ref).endswith(".npz") or Path(ref).is_file():
        if data:
            raise VqgenError(f"--data.{next(iter(data))}: --data.* settings apply to a --ref data spec, and {ref} "
                             "is a statistics file; drop them or make the file again with `vqgen fid-ref --data.*`")
        stats = load_ref(ref)
        check_protocol(stats.meta, model, ref)
        _warn_on_size(stats.meta, first_sample, ref)
        return stats
    return reference_stats(model, ref_data_config(str(ref), first_sample, data), "test", n)


def sample_format(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of one sample image; channels 1 for a grey PNG, else 3."""
    with Image.open(path) as im:
        (w, h), grey = im.size, im.getbands()[0] in ("1", "L", "I", "F")
    return h, w, 1 if grey else 3


def ref_data_config(spec: str, first_sample: Path, data: dict[str, Any] | None = None) -> DataConfig:
    """The DataConfig of a --ref SPEC. DataConfig's default 32 px would score 64-px samples against
    32-px references without a word, so size and channels come from the samples unless given."""
    data = data or {}
    h, w, channels = sample_format(first_sample)
    if h != w and "image_size" not in data:
        raise VqgenError(f"{first_sample}: samples are {w}x{h}, references are square; pass --data.image_size=N "
                         "or score against a .npz from `vqgen fid-ref`")
    values = {"image_size": h, "channels": channels, **data, "spec": spec}
    return apply(DataConfig(), values, source="vqgen fid --data.*")


def _warn_on_size(meta: dict[str, Any], first_sample: Path, ref: str | Path) -> None:
    size = (meta.get("data") or {}).get("image_size")
    h, w, _ = sample_format(first_sample)
    if size and (h, w) != (size, size):
        logger.warning("%s: reference images were %d px, samples are %dx%d; FID will measure the resize too",
                       ref, size, w, h)


def check_protocol(meta: dict[str, Any], model: InceptionFeatures, ref: str | Path) -> None:
    if not meta:
        logger.warning("%s: no JSON sidecar; assuming it was made with the same network and resize", ref)
        return
    if meta.get("weights_sha") != model.sha or meta.get("resize") != model.resize:
        raise VqgenError(
            f"{ref}: made with {meta.get('weights_source')} ({meta.get('resize')}), samples would be scored "
            f"with {model.source} ({model.resize}); pass the same --inception-weights as for fid-ref"
        )


def fid(
    samples_dir: str | Path, ref: str | Path, n: int = 0, weights: str | Path | None = None, n_ref: int = 0,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`vqgen fid`: FID, KID and IS (or why not) of the first n (0: all) images in `samples_dir`
    against `ref` (an .npz, or a data SPEC whose first n_ref test images are scored now, with the
    DataConfig settings `data` over the samples' own size and channels)."""
    model = InceptionFeatures(weights)
    samples = ImageFolder(samples_dir, n)
    stats = resolve_ref(ref, model, samples.paths[0], n_ref, data)
    extracted = extract_features(model, folder_batches(samples_dir, n), len(samples), desc="samples")
    result: dict[str, Any] = {**protocol(model), "n_samples": len(samples), "samples": str(samples_dir),
                              "reference": str(ref), "reference_meta": stats.meta,
                              "fid": frechet_distance(stats, extracted.features)}
    result.update(_kid(stats, extracted.features, ref))
    if extracted.logits is None:
        result["is"] = inception_score_unavailable(model.source)
    else:
        result["is_mean"], result["is_std"] = inception_score(extracted.logits)
    return result
