"""Evaluation: Inception FID/KID/IS (inception, fid), classifier FID for small data (classifier,
classifier_fid), tokenizer metrics (recon) and the report (report).

Importing the package registers the classifier with transformers' Auto classes, so
`AutoModel.from_pretrained(<classifier folder>)` works; that is the only import side effect.
"""

from transformers import AutoConfig, AutoModel

from eval.classifier import MODEL_TYPE, Classifier, ClassifierConfig

AutoConfig.register(MODEL_TYPE, ClassifierConfig, exist_ok=True)
AutoModel.register(ClassifierConfig, Classifier, exist_ok=True)

__all__ = ["Classifier", "ClassifierConfig"]
