import pytest
import torch
from transformers import AutoModel

import eval  # noqa: F401  (registers the classifier with the Auto classes)
from eval.classifier import Classifier, ClassifierConfig, ClassifierRunConfig, ClassifierTask, load_classifier
from vqgen.data import DataConfig
from vqgen.errors import VqgenError


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
