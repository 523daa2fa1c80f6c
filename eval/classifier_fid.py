"""Classifier FID and classifier IS: eval/fid.py's formulas on the small CNN of eval/classifier.py.

Always labelled "classifier FID (<data> CNN)" and kept apart from Inception numbers (see
eval/classifier.py for why they exist and what they can be compared with).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from eval.classifier import Classifier, load_classifier
from eval.fid import data_batches, folder_batches, frechet_distance, inception_score, stats_of
from vqgen.data import DataConfig, load_images
from vqgen.runs import sha256_file


@torch.no_grad()
def classifier_outputs(model: Classifier, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, feature_dim), logits (N, classes)) of uint8 (B, C, H, W) batches."""
    features, logits = [], []
    for images in batches:
        x = images.float().div(127.5).sub(1.0).to(model.device)  # the [-1, 1] range it was trained on
        if x.shape[1] != model.config.in_channels:  # PNGs are read as RGB; a grey PNG has 3 equal channels
            x = x.mean(1, keepdim=True) if model.config.in_channels == 1 else x.expand(-1, 3, -1, -1)
        out = model(x)
        features.append(out.features.cpu())
        logits.append(out.logits.cpu())
    return torch.cat(features), torch.cat(logits)


def classifier_fid(
    classifier: str | Path, samples_dir: str | Path, data: DataConfig, n: int = 0, split: str = "test"
) -> dict[str, Any]:
    """Classifier FID of the first n (0: all) samples against the `split` images, and classifier IS."""
    model = load_classifier(classifier)
    label = f"{model.config.data_spec or data.spec} CNN"
    real, _ = classifier_outputs(model, data_batches(load_images(data, split), batch_size=500))
    fake, logits = classifier_outputs(model, folder_batches(samples_dir, n, batch_size=500))
    is_mean, is_std = inception_score(logits)
    folder = Path(classifier) / "model" if (Path(classifier) / "model").is_dir() else Path(classifier)
    return {f"classifier FID ({label})": frechet_distance(stats_of(real, {"n": len(real)}), fake),
            f"classifier IS ({label})": is_mean, f"classifier IS std ({label})": is_std,
            "classifier_sha256": sha256_file(folder / "model.safetensors"), "classifier_n_samples": len(fake),
            "classifier_n_reference": len(real), "classifier_reference_split": split}
