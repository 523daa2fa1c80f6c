"""A trained tokenizer's model folder: loading it back, and the data it was trained on.

The folder is `save_pretrained` output (config.json + model.safetensors) plus `vqgen_tokenizer.json`,
the training record written by `stage1_vqvae/train.py`; a path may name the folder itself or the
training run folder that holds it as model/ (the rule of `core.model_folder`).
"""

from __future__ import annotations

from pathlib import Path

from core.config import apply
from core.data import DataConfig
from core.errors import VqgenError
from core.model_folder import load_model, model_folder
from core.runs import read_json
from stage1_vqvae.model import MODEL_TYPE, VQVAE

TRAINING_FILE = "vqgen_tokenizer.json"  # {"data": DataConfig, "val": metrics, ...}, written by train.py
FIX = "train one with `vqgen train-tokenizer`"


def tokenizer_folder(path: str | Path) -> Path:
    """The model folder of a tokenizer given its model folder or its training run folder (RUN/model)."""
    return model_folder(path, "tokenizer", FIX)


def load_tokenizer(path: str | Path) -> VQVAE:
    """A trained tokenizer (eval mode) from its model folder, or from a training run folder holding model/."""
    return load_model(VQVAE, path, "tokenizer", (MODEL_TYPE,), FIX)


def training_data(path: str | Path) -> DataConfig:
    """The DataConfig the tokenizer at `path` (its model folder or training run folder) was trained on,
    from model/vqgen_tokenizer.json, so later stages can encode the same kind of images."""
    file = tokenizer_folder(path) / TRAINING_FILE
    if not file.is_file():
        raise VqgenError(
            f"{file}: not found, so the tokenizer's training data settings are unknown (it was not saved by "
            "`vqgen train-tokenizer`); pass the data settings yourself (--data SPEC, --data.image_size=...)"
        )
    data = read_json(file, "tokenizer training record").get("data")
    if not isinstance(data, dict):
        raise VqgenError(f"{file}: field 'data' is missing; re-run `vqgen train-tokenizer` or pass the data settings yourself")
    return apply(DataConfig(), data, source=str(file))
