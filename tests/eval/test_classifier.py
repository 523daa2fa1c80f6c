import pytest
import torch
from transformers import AutoModel

import eval  # noqa: F401  (registers the classifier with the Auto classes)
from core.data import DataConfig
from core.errors import VqgenError
from eval.classifier import Classifier, ClassifierConfig, ClassifierRunConfig, ClassifierTask, load_classifier


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 32), (1, 28)])
def test_features_and_logits_shapes(channels, size):
    model = Classifier(ClassifierConfig(in_channels=channels, num_classes=10, widths=(8, 16), feature_dim=24))
    out = model(torch.randn(5, channels, size, size))
    assert out.features.shape == (5, 24) and out.logits.shape == (5, 10)


def test_save_and_reload_gives_identical_outputs(tmp_path):
    model = Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16)).eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(3, 1, 32, 32)
    for loaded in (load_classifier(tmp_path), AutoModel.from_pretrained(tmp_path).eval()):
        torch.testing.assert_close(loaded(x).features, model(x).features)
    with pytest.raises(VqgenError, match="model_type"):
        (tmp_path / "config.json").write_text('{"model_type": "other"}')
        load_classifier(tmp_path)


def test_a_few_steps_improve_accuracy():
    torch.manual_seed(0)
    task = ClassifierTask(ClassifierRunConfig(data=DataConfig(max_images=512), widths=(8, 16), feature_dim=32))
    batch = {k: torch.stack([task.train_set[i][k] for i in range(128)]) for k in ("image", "label")}
    model, opt = task.model, torch.optim.AdamW(task.model.parameters(), lr=3e-3)
    before = float(task.training_step(model, batch)["accuracy"])
    for _ in range(20):
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(task.training_step(model, batch)["accuracy"])
    assert after > before + 0.2


def test_a_run_folder_loads_its_model(tmp_path):
    model = Classifier(ClassifierConfig(widths=(8,), feature_dim=8)).eval()
    model.save_pretrained(tmp_path / "model")
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(load_classifier(tmp_path)(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "key, value, rule",
    [("in_channels", 0, "be >= 1"), ("num_classes", 1, "be >= 2"), ("widths", (), "be at least 1 value"),
     ("widths", (8, 0), "be at least 1 value"), ("feature_dim", 0, "be >= 1"), ("feature_dim", 8.0, "be int"),
     ("data_spec", None, "be str")],
)
def test_each_bad_setting_is_one_line_naming_its_key(key, value, rule):
    with pytest.raises(VqgenError, match=rf"^classifier config: '?model\.{key}'? must {rule}") as err:
        ClassifierConfig(**{key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage, message", [("model.safetensors", "cannot load the classifier"),
                                             ("config.json", "config.json is missing")])
def test_a_damaged_folder_is_one_line_naming_it(tmp_path, damage, message):
    Classifier(ClassifierConfig(widths=(8,), feature_dim=8)).save_pretrained(tmp_path / "model")
    if damage == "model.safetensors":
        (tmp_path / "model" / damage).write_bytes(b"not safetensors")
    else:
        (tmp_path / "model" / damage).unlink()
    with pytest.raises(VqgenError, match=message) as err:
        load_classifier(tmp_path)
    assert str(tmp_path / "model") in str(err.value) and "\n" not in str(err.value)
