"""`vqgen fid` and `vqgen fid-ref`: FID, sFID, KID, precision/recall and density/coverage (and IS where
the network has logits) of a folder of samples against a reference, with the real-data floor beside
them (eval/floor.py).

A reference is an `.npz` of statistics with a JSON sidecar recording the protocol (eval/reference.py);
a data SPEC scored on the spot; or, from the pipeline, a DataConfig and split. The last two go through
the statistics cache (eval/cache.py). A third-party `.npz` gives FID (and sFID where it holds
`mu_s`/`sigma_s`); the metrics that need reference features, and the floor, are reported unavailable.

Everything a user can get wrong is checked before Inception runs: the samples in one cheap pass
(eval/samples.py), the reference file's arrays, the protocol it was made with and the image format
it was made at, the number of images on each side, and the output path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import apply
from core.data import DataConfig
from core.errors import VqgenError
from eval.cache import StatsCache
from eval.data_stats import BATCH_SIZE, Network, protocol, reference_split, split_stats
from eval.floor import prepare_floor
from eval.inception import (
    Extracted,
    WeightSource,
    extract_features,
    find_weights,
    inception_score_unavailable,
    network_loader,
)
from eval.reference import RefStats, claim_ref_out, load_ref, save_ref, sidecar_of
from eval.samples import ImageFormat, SampleFolder, check_reference_format
from eval.scores import inception_score, scores, stats_of

logger = logging.getLogger(__name__)


def folder_batches(root: str | Path, n: int = 0, batch_size: int = BATCH_SIZE) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) batches of the first n (0: all) images under `root`, checked first."""
    return SampleFolder(root, n).batches(batch_size)


def fid_ref(
    data: DataConfig, split: str, out: str | Path, weights: str | Path | None = None, n: int = 0,
    cache: StatsCache | None = None,
) -> RefStats:
    """`vqgen fid-ref`: statistics of `split` written to `out` (.npz) and its .json sidecar, taken from
    `cache` when it holds them. The output (checked, then locked) and the split are checked before
    Inception loads."""
    with claim_ref_out(out):
        dataset = reference_split(data, split, n)
        source = find_weights(weights)
        stats = split_stats(network_loader(source), source, dataset, n, cache)
        save_ref(out, stats)
    logger.info("wrote %s (%d %s images of %s)", out, stats.meta["n"], split, data.spec)
    return stats


@dataclass
class Reference:
    """A checked reference: its name in reports, its statistics once there is a network, and the
    data and split it was drawn from (for the real-data floor), or why those are unknown."""

    name: str
    stats: Callable[[Network], RefStats]
    data: DataConfig | None
    split: str
    unknown_data: str = ""


def prepare_ref(
    ref: str | Path | DataConfig, source: WeightSource, fmt: ImageFormat, n: int = 0,
    data: dict[str, Any] | None = None, split: str = "test", cache: StatsCache | None = None,
) -> Reference:
    """Check the reference before any Inception work. `ref` is an .npz (read and checked now: arrays,
    protocol, image format); a DataConfig (the pipeline's), whose `split` must be at the samples'
    format `fmt`; or a data SPEC, loaded at the samples' image size and channels unless `data` (the
    --data.* settings) names them. The first n (0: all) images of a data reference are scored then,
    or read from `cache`."""
    if isinstance(ref, DataConfig):
        return data_reference(ref, split, n, source, cache, samples_format=fmt)
    if str(ref).endswith(".npz") or Path(ref).is_file():
        return file_reference(Path(ref), source, fmt, data)
    return data_reference(ref_data_config(str(ref), fmt, data), split, n, source, cache, name=str(ref))


def data_reference(cfg: DataConfig, split: str, n: int, source: WeightSource, cache: StatsCache | None,
                   name: str = "", samples_format: ImageFormat | None = None) -> Reference:
    """The first n (0: all) images of `split`; with `samples_format`, the samples must have the size
    and channels the split is loaded at."""
    dataset = reference_split(cfg, split, n)
    name = name or f"data '{cfg.spec}' ({split} split)"
    if samples_format is not None:
        check_reference_format(samples_format, dataset.image_size, dataset.channels, name,
                               "score samples made at the data's image_size and channels")
    return Reference(name, lambda network: split_stats(network, source, dataset, n, cache), cfg, split)


def file_reference(path: Path, source: WeightSource, fmt: ImageFormat, data: dict[str, Any] | None) -> Reference:
    """Statistics read from `path`, checked against the network and the samples' format."""
    if data:
        raise VqgenError(f"--data.{next(iter(data))}: --data.* settings apply to a --ref data spec, and {path} "
                         "is a statistics file; drop them or make the file again with `vqgen fid-ref --data.*`")
    stats = load_ref(path)
    check_protocol(stats.meta, source, path)
    made_at = stats.meta.get("data", {})
    check_reference_format(fmt, made_at.get("image_size"), made_at.get("channels"), str(path),
                           f"make the reference at the samples' format (vqgen fid-ref --data.image_size="
                           f"{fmt.height} --data.channels={fmt.channels}), or pass --ref SPEC")
    floor_data, unknown = sidecar_data(stats.meta, path)
    return Reference(str(path), lambda _: stats, floor_data, str(stats.meta.get("split", "")), unknown)


def sidecar_data(meta: dict[str, Any], path: Path) -> tuple[DataConfig | None, str]:
    """The data settings a sidecar records (our `fid-ref` writes every one), or why there are none."""
    if not meta.get("data") or not meta.get("split"):
        return None, f"{path} records no data settings; pass --ref SPEC, or a reference from `vqgen fid-ref`"
    try:
        return apply(DataConfig(), meta["data"], source=str(sidecar_of(path))), ""
    except VqgenError as err:
        return None, str(err)


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
    samples_dir: str | Path, ref: str | Path | DataConfig, n: int = 0, weights: str | Path | None = None,
    n_ref: int = 0, data: dict[str, Any] | None = None, split: str = "test", cache: StatsCache | None = None,
) -> dict[str, Any]:
    """`vqgen fid`: the scores (or why not) of the first n (0: all) images in `samples_dir` against
    `ref` (see `prepare_ref`; n_ref: the images of a data reference, 0: all), and the real-data floor
    (`real_data`) at the same N. Samples, reference and the floor's data are checked, and the floor's
    split loaded, before the network loads; with `cache`, data statistics are read from it."""
    samples = SampleFolder(samples_dir, n)
    source = find_weights(weights)
    reference = prepare_ref(ref, source, samples.format, n_ref, data, split, cache)
    floor = prepare_floor(reference.data, reference.split, reference.name, len(samples), source, cache,
                          reference.unknown_data)
    network = network_loader(source)
    ref_stats = reference.stats(network)
    extracted = extract_features(network(), samples.batches(BATCH_SIZE), len(samples), desc="samples")
    fake = stats_of(extracted.features, {}, extracted.spatial)
    return {**protocol(source), "n_samples": len(samples), "samples": str(samples_dir), "reference": reference.name,
            "reference_meta": ref_stats.meta, **scores(ref_stats, fake, reference.name),
            **_inception_score(extracted, source), "real_data": floor(network, ref_stats)}


def _inception_score(extracted: Extracted, source: WeightSource) -> dict[str, Any]:
    if extracted.logits is None:
        return {"is": inception_score_unavailable(source.kind)}
    mean, std = inception_score(extracted.logits)
    return {"is_mean": mean, "is_std": std}
