"""The one rule for finding a saved model (config.json + model.safetensors) and loading it."""

import pytest
import torch

from core.errors import VqgenError
from core.model_folder import load_model, model_folder
from eval.classifier import Classifier, ClassifierConfig

FIX = "train one with `vqgen train-classifier`"


def save_tiny(folder) -> Classifier:
    model = Classifier(ClassifierConfig(widths=(4,), feature_dim=4)).eval()
    model.save_pretrained(folder)
    return model


def test_a_model_folder_is_itself_and_a_run_folder_is_its_model(tmp_path):
    save_tiny(tmp_path / "model")
    assert model_folder(tmp_path / "model", "classifier", FIX) == tmp_path / "model"
    assert model_folder(tmp_path, "classifier", FIX) == tmp_path / "model"


@pytest.mark.parametrize(
    "remove, where, missing",
    [(None, "nowhere", "no such folder"), ("model.safetensors", "model", "model.safetensors is missing"),
     ("config.json", "model", "config.json is missing"), ("both", ".", "config.json and model.safetensors are missing")],
)
def test_an_incomplete_folder_is_one_line_naming_the_path_and_the_fix(tmp_path, remove, where, missing):
    save_tiny(tmp_path / "model")
    for name in {"both": ("config.json", "model.safetensors")}.get(remove, (remove,) if remove else ()):
        (tmp_path / "model" / name).unlink()
    path = tmp_path / "nowhere" if where == "nowhere" else tmp_path
    with pytest.raises(VqgenError) as err:
        model_folder(path, "classifier", FIX)
    message = str(err.value)
    named = path if where in ("nowhere", ".") else tmp_path / "model"
    assert message.startswith(f"{named}: {missing}") and FIX in message and "\n" not in message


def test_load_model_gives_the_saved_model_in_eval_mode(tmp_path):
    model = save_tiny(tmp_path / "model")
    loaded = load_model(Classifier, tmp_path, "classifier", ("vqgen_classifier",), FIX)
    x = torch.randn(2, 1, 8, 8)
    assert not loaded.training
    torch.testing.assert_close(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "damage, message",
    [("config.json", "not valid JSON"), ("model.safetensors", "cannot load the classifier"),
     ("model_type", "model_type is 'llama', not 'vqgen_classifier'"), ("bad value", "model.feature_dim must be >= 1"),
     ("other weights", "weights do not match config.json")],
)
def test_load_model_failures_are_one_line_naming_the_folder(tmp_path, damage, message):
    save_tiny(tmp_path)
    config = tmp_path / "config.json"
    if damage in ("config.json", "model.safetensors"):
        (tmp_path / damage).write_bytes(b"\x00not " + damage.encode())
    elif damage == "model_type":
        config.write_text('{"model_type": "llama"}')
    elif damage == "bad value":
        config.write_text(config.read_text().replace('"feature_dim": 4', '"feature_dim": 0'))
    else:
        ClassifierConfig(widths=(4, 4), feature_dim=4).save_pretrained(tmp_path)  # one more conv stage
    with pytest.raises(VqgenError, match=message) as err:
        load_model(Classifier, tmp_path, "classifier", ("vqgen_classifier",), FIX)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
