"""The whole pipeline at toy scale on real Fashion-MNIST, through the CLI, and its resume."""

import json
from pathlib import Path

import pytest
import yaml

from vqgen.cli import main
from vqgen.config import read_yaml
from vqgen.errors import VqgenError
from vqgen.pipeline import pipeline_config, resolved_yaml, stage_settings

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

TOY = ["--data.max_images=256", "--tokenizer.preset=tiny", "--tokenizer.train.steps=8",
       "--tokenizer.train.batch_size=32", "--tokenizer.train.eval_every=8", "--prior.train.steps=8",
       "--prior.train.batch_size=32", "--prior.train.eval_every=8", "--prior.train.warmup_steps=2",
       "--sample.per_class=1", "--sample.batch_size=10", "--eval.inception_n=6", "--eval.ref_n=6",
       "--eval.rfid_n=6", "--eval.recon_n=8", "--eval.classifier.train.steps=4"]


@pytest.mark.slow
def test_pipeline_end_to_end_then_resume(tmp_path, capsys, fmnist_available):
    out = tmp_path / "run"
    # A class id that does not exist stops the run at the sampling stage with a one-line error...
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY,
                 "--sample.classes=[42]", "--sample.per_class=0", "--sample.n=4"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vqgen pipeline: error:")]
    assert len(errors) == 1 and "out of range" in errors[0] and "Traceback" not in err
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == ["codes", "prior", "tokenizer"]
    # ...and the fixed command skips the three finished stages and runs the rest.
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 3 and "[7/7] classifier" in printed
    for name in ("config.yaml", "report.md", "curves.png", "reconstructions.png", "samples/grid.png",
                 "tokenizer/model/model.safetensors", "prior/model/vqgen_prior.json", "codes/vqgen_codes.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"torch", "transformers", "accelerate", "python"} <= set(metrics["versions"])
    assert metrics["machine"]["cpu_count"] >= 1 and "platform" in metrics["machine"]
    summary = metrics["summary"]
    assert summary["inception_n_samples"] == 6 and summary["inception_fid"] > 0
    assert "unavailable" in summary["inception_is"]  # fid-helper's network has no logits
    assert summary["prior_bits_per_token"] > 0 and set(summary["stage_seconds"]) >= {"tokenizer", "fid"}
    assert any(k.startswith("classifier FID") for k in summary)
    report = (out / "report.md").read_text()
    assert "![samples](samples/grid.png)" in report and "N = 6" in report
    assert "(reconstructions.png)" in report and "(curves.png)" in report
    # A finished stage is not reused for other settings, and config.yaml keeps what ran.
    config = (out / "config.yaml").read_text()
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY,
                 "--prior.train.steps=9"]) == 2
    err = capsys.readouterr().err
    assert "prior.train.steps: 8 -> 9" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_its_resolved_yaml_loads_again(path):
    cfg = pipeline_config(read_yaml(path), str(path))
    assert cfg.tokenizer.data == cfg.data == cfg.eval.classifier.data
    assert pipeline_config(yaml.safe_load(resolved_yaml(cfg)), "config.yaml") == cfg


@pytest.mark.parametrize("section", [{"tokenizer": {"data": {"max_images": 5}}},
                                     {"eval": {"classifier": {"data": {"spec": "mnist"}}}}])
def test_a_stage_data_section_is_refused(section):
    with pytest.raises(VqgenError, match="one data set for every stage"):
        pipeline_config(section, "run.yaml")


def test_stage_settings_ignore_runtime_only_keys():
    cfg = pipeline_config({}, "defaults")
    chatty = pipeline_config({"prior": {"train": {"log_every": 1, "save_every": 7}}, "sample": {"batch_size": 3}},
                             "overrides")
    assert all(stage_settings(cfg, s) == stage_settings(chatty, s) for s in ("prior", "samples"))
    longer = pipeline_config({"prior": {"train": {"steps": 5}}}, "overrides")
    assert stage_settings(cfg, "prior") != stage_settings(longer, "prior")
    assert stage_settings(cfg, "tokenizer") == stage_settings(longer, "tokenizer")
