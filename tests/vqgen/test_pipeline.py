"""The whole pipeline at toy scale on real Fashion-MNIST, through the CLI, and its resume."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from core.config import load_config, parse_overrides
from core.errors import VqgenError
from vqgen.cli import main
from vqgen.pipeline import PipelineConfig, resolved_yaml, run_pipeline, stage_settings

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

TOY = ["--data.max_images=256", "--tokenizer.preset=tiny", "--tokenizer.train.steps=8",
       "--tokenizer.train.batch_size=32", "--tokenizer.train.eval_every=8", "--prior.train.steps=8",
       "--prior.train.batch_size=32", "--prior.train.eval_every=8", "--prior.train.warmup_steps=2",
       "--sample.per_class=1", "--sample.batch_size=10", "--eval.inception_n=6", "--eval.ref_n=6",
       "--eval.rfid_n=6", "--eval.recon_n=8", "--eval.classifier.train.steps=4"]


@pytest.mark.slow
def test_pipeline_end_to_end_then_resume(tmp_path, capsys, fmnist_available):
    out = tmp_path / "run"
    # A class id that does not exist stops the run before stage 1 (not at the sampling stage)...
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY,
                 "--sample.classes=[42]", "--sample.per_class=0", "--sample.n=6"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vqgen pipeline: error:")]
    assert len(errors) == 1 and "sample.classes [42] out of range" in errors[0] and "Traceback" not in err
    assert not out.exists()
    # ...a run without the classifier stage finishes; the same command with it skips the six stages.
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY,
                 "--eval.use_classifier=false"]) == 0
    assert "[6/6] fid" in capsys.readouterr().out
    assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(out), *TOY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 6 and "[7/7] classifier" in printed
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
def test_every_config_loads_and_its_resolved_yaml_loads_again(path, tmp_path):
    cfg = load_config(PipelineConfig, path)
    assert cfg.tokenizer.data == cfg.data == cfg.eval.classifier.data
    (tmp_path / "config.yaml").write_text(resolved_yaml(cfg))
    assert load_config(PipelineConfig, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("key", ["tokenizer.data.max_images=5", "eval.classifier.data.spec=mnist"])
def test_a_stage_data_section_is_refused(key, tmp_path):
    with pytest.raises(VqgenError, match=r"^command line: --[a-z.]+\.data: the pipeline uses one data set"):
        load_config(PipelineConfig, None, [f"--{key}"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(parse_overrides([f"--{key}"])))
    with pytest.raises(VqgenError, match=rf"^{path}: [a-z.]+\.data: the pipeline uses one data set"):
        load_config(PipelineConfig, path)


def test_stage_settings_ignore_runtime_only_keys():
    cfg = load_config(PipelineConfig)
    chatty = load_config(PipelineConfig, None, ["--prior.train.log_every=1", "--prior.train.save_every=7", "--sample.batch_size=3"])
    assert all(stage_settings(cfg, s) == stage_settings(chatty, s) for s in ("prior", "samples"))
    longer = load_config(PipelineConfig, None, ["--prior.train.steps=5"])
    assert stage_settings(cfg, "prior") != stage_settings(longer, "prior")
    assert stage_settings(cfg, "tokenizer") == stage_settings(longer, "tokenizer")


def test_a_two_level_pipeline_reports_each_level(folder, tmp_path):
    """VQ-VAE-2 end to end on 16x16 images (4x4 top codes, K=32, over 8x8 bottom codes, K=64): every stage
    runs, and the report shows each level's usage, the prior's bits/token per level and the top-only pictures.
    About 15 s, most of it the two Inception passes (reconstruct's rFID, fid) that every pipeline run makes."""
    out = tmp_path / "run"
    tiny = ["--tokenizer.preset=tiny", "--tokenizer.model={levels: 2, top_quantizer: {codebook_size: 32}}",
            "--prior.model={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}"]
    steps = [f"--{stage}.train.{key}={value}" for stage in ("tokenizer", "prior", "eval.classifier")
             for key, value in (("steps", 2), ("batch_size", 8), ("eval_every", 2))]
    cfg = load_config(PipelineConfig, None, [f"--data.spec=folder:{folder}", "--data.image_size=16",
                                             "--data.val_fraction=0.25", *tiny, *steps, "--prior.train.warmup_steps=1",
                                             "--eval.classifier.widths=[8, 16]", "--sample.per_class=2",
                                             "--eval.inception_n=4", "--eval.ref_n=4", "--eval.rfid_n=4",
                                             "--eval.recon_n=4"])
    run_pipeline(cfg, out)
    for name in ("reconstructions.png", "reconstructions_top_only.png", "eval/reconstruct/reconstructions_top_only.png",
                 "samples/grid.png", "classifier/model/model.safetensors"):
        assert (out / name).is_file(), name
    with Image.open(out / "reconstructions_top_only.png") as grid:  # 3 rows (images, full, top only) of 4 tiles
        assert grid.size == (4 * 17 + 1, 3 * 17 + 1)
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    levels = json.loads((out / "metrics.json").read_text())["summary"]["levels"]
    assert sorted(levels) == ["bottom", "top"]
    for lv, k in (("top", 32), ("bottom", 64)):
        assert levels[lv]["tokenizer_usage_pct"] == stages["reconstruct"][f"{lv}/usage"] > 0
        assert 1 <= levels[lv]["tokenizer_perplexity"] <= k
        assert levels[lv]["prior_bits_per_token"] == stages["prior"][f"val/{lv}/bits_per_token"] > 0
    report = (out / "report.md").read_text()
    assert "![top-only reconstructions](reconstructions_top_only.png)" in report
    for row in ("codebook usage % (top)", "codebook usage % (bottom)", "val bits/token (top)", "val bits/token (bottom)"):
        assert f"| {row} |" in report
    assert "| codebook usage % |" not in report
