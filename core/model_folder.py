"""A saved model folder (`save_pretrained` output: config.json + model.safetensors): finding it
inside a run folder, and loading it with every failure as one line that names the folder and the fix.

One rule for every model vqgen saves (tokenizer, prior, classifier): `path` is the model folder
when it holds both files, or a training run folder whose `model/` holds them.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TypeVar

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import PreTrainedModel

from core.errors import VqgenError
from core.runs import read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FILES = (CONFIG_FILE, WEIGHTS_FILE)

M = TypeVar("M", bound=PreTrainedModel)


def model_folder(path: str | Path, what: str, fix: str) -> Path:
    """The folder holding config.json + model.safetensors: `path` itself, or `path`/model for a run
    folder. Otherwise one line naming the path, what is missing there, and `fix` (how to get a
    folder, e.g. "train one with `vqgen train-tokenizer`")."""
    folder = _locate(Path(path))
    missing = [name for name in FILES if not (folder / name).is_file()]
    if not missing:
        return folder
    if not folder.is_dir():
        raise VqgenError(f"{folder}: no such folder; pass a {what} model folder ({' + '.join(FILES)}) "
                         f"or its run folder, or {fix}")
    raise VqgenError(f"{folder}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing, so this "
                     f"is not a {what} model folder or run folder; pass one, or {fix}")


def _locate(path: Path) -> Path:
    """`path` or `path`/model: the one holding both files, else the one holding either (so that an
    error can say which file went missing), else `path`."""
    for holds in (all, any):
        for folder in (path, path / "model"):
            if holds((folder / name).is_file() for name in FILES):
                return folder
    return path


def load_model(cls: type[M], path: str | Path, what: str, model_types: Collection[str], fix: str) -> M:
    """`cls.from_pretrained` of the model folder at `path` (see `model_folder`), in eval mode, after
    checking config.json's model_type; a corrupt file or weights that do not fit config.json are
    one line naming the folder, never a traceback."""
    config = _locate(Path(path)) / CONFIG_FILE
    if config.is_file():  # another kind of model is the first thing to say, before any missing file
        settings = read_json(config, f"{what} config")
        model_type = settings.get("model_type") if isinstance(settings, dict) else None
        if model_type not in model_types:
            raise VqgenError(f"{config}: model_type is {model_type!r}, not {' or '.join(map(repr, model_types))}, "
                             f"so this is not a {what}; pass a {what} folder, or {fix}")
    folder = model_folder(path, what, fix)
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError, StrictDataclassError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VqgenError(f"{folder}: cannot load the {what} ({first}); the files are corrupt, copy them "
                         f"again or {fix}") from None
    broken = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"]) + sorted(info["mismatched_keys"])
    if broken:
        raise VqgenError(f"{folder / WEIGHTS_FILE}: weights do not match config.json ({len(broken)} keys, e.g. "
                         f"{broken[0]}); the folder is corrupt or mixed from two models, copy it again or {fix}")
    return model.eval()
