"""bench/two_levels.py's parts that need no finished run: the runs it accepts, the bits per image of the
two demo configs it compares, and the prior's bits read back per level (the benchmark itself takes two
20-minute pipeline runs)."""

import pytest

from bench.two_levels import code_bits, main, prior_bits
from core.config import load_config
from core.runs import MetricsLog
from stage1_vqvae.model import LevelSpec
from stage1_vqvae.train import build_model_config, model_settings
from vqgen.pipeline import PipelineConfig


def test_a_folder_that_is_not_a_finished_run_is_one_line_before_any_work(tmp_path):
    (tmp_path / "tokenizer" / "model").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--one", str(tmp_path), "--two", str(tmp_path)])
    assert str(exit_.value) == (f"bench.two_levels: error: {tmp_path}: not a finished pipeline run (no metrics.json, "
                                "prior/metrics.jsonl); pass the --out folder of a `vqgen pipeline` run that finished")


def test_the_two_demo_configs_spend_the_same_bits_per_image():
    bits = {}
    for name in ("fashion-mnist", "fashion-mnist-2level"):
        cfg = load_config(PipelineConfig, f"configs/{name}.yaml")
        bits[name] = code_bits(build_model_config(model_settings(cfg.tokenizer), cfg.data, 1).level_specs)
    assert bits["fashion-mnist"] == {"levels": {"codes": {"grid": "8x8", "K": 512, "bits": 576.0}}, "bits_per_image": 576.0}
    assert bits["fashion-mnist-2level"] == {"levels": {"top": {"grid": "4x4", "K": 256, "bits": 128.0},
                                                       "bottom": {"grid": "8x8", "K": 128, "bits": 448.0}},
                                            "bits_per_image": 576.0}


def test_the_prior_bits_are_its_last_val_pass_per_level_and_per_image(tmp_path):
    log = MetricsLog(tmp_path / "prior" / "metrics.jsonl")
    log.append({"step": 5, "val/bits_per_token": 9.0, "val/top/bits_per_token": 9.0, "val/bottom/bits_per_token": 9.0})
    log.append({"step": 8, "train/loss": 1.0})
    log.append({"step": 10, "val/bits_per_token": 5.8, "val/top/bits_per_token": 5.0, "val/bottom/bits_per_token": 6.0})
    specs = [LevelSpec("top", 2, 2, 8), LevelSpec("bottom", 4, 4, 16)]
    assert prior_bits(tmp_path, specs) == {"val_bits_per_token": 5.8, "step": 10, "val_bits_per_image": 4 * 5.0 + 16 * 6.0,
                                           "val_bits_per_token_per_level": {"top": 5.0, "bottom": 6.0}}
    log.append({"step": 12, "val/bits_per_token": 4.0})
    assert prior_bits(tmp_path, [LevelSpec("codes", 4, 4, 16)])["val_bits_per_image"] == 16 * 4.0
