"""Evaluation: the Inception network (inception); the scores, FID, sFID, KID, IS (scores) and
precision/recall, density/coverage (precision_recall); reference files (reference), data statistics
(data_stats) and their per-user cache (cache); the real-data floor (floor); `vqgen fid`/`fid-ref` (fid)
and the samples they score (samples); classifier FID for small data (classifier, classifier_fid);
tokenizer metrics (recon) and the report (report).

Importing the package registers the classifier with transformers' Auto classes, so
`AutoModel.from_pretrained(<classifier folder>)` works; that is the only import side effect.
"""

from transformers import AutoConfig, AutoModel

from eval.classifier import MODEL_TYPE, Classifier, ClassifierConfig

AutoConfig.register(MODEL_TYPE, ClassifierConfig, exist_ok=True)
AutoModel.register(ClassifierConfig, Classifier, exist_ok=True)

__all__ = ["Classifier", "ClassifierConfig"]
