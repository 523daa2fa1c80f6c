"""bench/quality.py's argument handling and sampling plan (the benchmark itself takes an hour)."""

import pytest

from bench.quality import N, main, sample_config
from core.config import load_config
from vqgen.pipeline import PipelineConfig


def test_run_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "--run" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_one_line_before_any_work(tmp_path):
    (tmp_path / "tokenizer" / "model").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(tmp_path)])
    assert str(exit_.value) == (f"bench.quality: error: {tmp_path}: not a pipeline run with a trained tokenizer and "
                                "prior (no config.yaml, prior/model); pass --run with the --out folder of a "
                                "`vqgen pipeline` run")


def test_ten_thousand_samples_class_balanced_where_the_run_was():
    demo = load_config(PipelineConfig, "configs/fashion-mnist.yaml")  # per_class: 100
    balanced = sample_config(demo, num_classes=10)
    assert (balanced.per_class, balanced.classes, balanced.cfg_scale) == (N // 10, None, demo.sample.cfg_scale)
    plain = sample_config(load_config(PipelineConfig, None, ["--sample.per_class=0", "--sample.n=64"]), 10)
    assert (plain.per_class, plain.n) == (0, N)
