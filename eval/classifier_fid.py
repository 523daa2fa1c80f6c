"""Classifier FID and classifier IS: eval/scores.py's formulas on the small CNN of eval/classifier.py.

Always labelled "classifier FID (<data> CNN)" and kept apart from Inception numbers (see
eval/classifier.py for why they exist and what they can be compared with).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from core.data import DataConfig
from core.runs import sha256_file
from eval.classifier import Classifier, classifier_folder, load_classifier
from eval.data_stats import data_batches, reference_split
from eval.inception import require_finite
from eval.samples import SampleFolder, check_reference_format
from eval.scores import frechet_distance, inception_score, stats_of

BATCH = 500


@torch.no_grad()
def classifier_outputs(model: Classifier, batches: Iterable[torch.Tensor], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, feature_dim), logits (N, classes)) of uint8 (B, C, H, W) batches of `what`."""
    features, logits = [], []
    for images in batches:
        x = images.float().div(127.5).sub(1.0).to(model.device)  # the [-1, 1] range it was trained on
        if x.shape[1] != model.config.in_channels:  # the same conversion on both sides (formats are checked)
            x = x.mean(1, keepdim=True) if model.config.in_channels == 1 else x.expand(-1, 3, -1, -1)
        out = model(x)
        features.append(out.features.cpu())
        logits.append(out.logits.cpu())
    features = torch.cat(features)
    require_finite(features, f"{what}: the classifier's features", "the classifier is damaged: train it again")
    return features, torch.cat(logits)


def classifier_fid(
    classifier: str | Path, samples_dir: str | Path, data: DataConfig, n: int = 0, split: str = "test"
) -> dict[str, Any]:
    """Classifier FID of the first n (0: all) samples against the `split` images, and classifier IS.
    The samples must have the size and channels the `split` images are loaded at (checked first)."""
    samples = SampleFolder(samples_dir, n)
    reference = reference_split(data, split)
    check_reference_format(samples.format, reference.image_size, reference.channels,
                           f"data '{data.spec}' ({split} split)",
                           "score samples made from this data set, or set data.image_size / data.channels to theirs")
    model = load_classifier(classifier)
    label = f"{model.config.data_spec or data.spec} CNN"
    real, _ = classifier_outputs(model, data_batches(reference, batch_size=BATCH), f"data '{data.spec}'")
    fake, logits = classifier_outputs(model, samples.batches(BATCH), str(samples_dir))
    is_mean, is_std = inception_score(logits)
    return {f"classifier FID ({label})": frechet_distance(stats_of(real, {"n": len(real)}), fake),
            f"classifier IS ({label})": is_mean, f"classifier IS std ({label})": is_std,
            "classifier_sha256": sha256_file(classifier_folder(classifier) / "model.safetensors"), "classifier_n_samples": len(fake),
            "classifier_n_reference": len(real), "classifier_reference_split": split}
