"""The prior registry: every arch name maps to one entry, and every user-facing list of archs is read from it."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from core.config import load_config, rule_of
from core.errors import VqgenError
from stage2_prior.registry import ARCHS, PRIORS, prior_kind
from stage2_prior.train import PriorRunConfig, build_prior, train_prior
from stage2_prior.vocab import PriorVocab
from vqgen.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from codes_folder import write_codes  # noqa: E402

LISTED = "choose one of gpt, pixelcnn, maskgit"


def test_the_registry_lists_every_prior_and_the_arch_setting_reads_it():
    assert ARCHS == tuple(PRIORS) == ("gpt", "pixelcnn", "maskgit")
    arch = next(f for f in dataclasses.fields(PriorRunConfig) if f.name == "arch")
    assert rule_of(arch).choices == ARCHS  # the CLI's --arch and a YAML's prior.arch check this rule


@pytest.mark.parametrize("arch", ARCHS)
def test_each_entry_builds_a_model_its_loader_accepts(arch):
    with torch.device("meta"):
        model = build_prior(PriorRunConfig(arch=arch, preset="demo"), PriorVocab(512, 10), 8, 8)
    kind = prior_kind(arch)
    assert model.config.model_type in kind.model_types and kind.config_problem(model.config) is None


def test_an_unknown_arch_is_one_line_listing_the_registry(tmp_path):
    with pytest.raises(VqgenError, match=f"prior.arch: unknown architecture 'diffusion'; {LISTED}"):
        prior_kind("diffusion")
    codes = write_codes(tmp_path / "codes", n_train=8, n_val=4)
    with pytest.raises(VqgenError, match=LISTED) as err:
        train_prior(PriorRunConfig(codes=str(codes), arch="diffusion"), tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    with pytest.raises(VqgenError, match="arch.*one of gpt, pixelcnn, maskgit") as err:
        load_config(PriorRunConfig, overrides=["--arch=diffusion"])
    assert "\n" not in str(err.value)


def test_the_cli_offers_the_registry(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train-prior", "--codes", str(tmp_path), "--arch", "diffusion", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "one of gpt, pixelcnn, maskgit" in err and "Traceback" not in err


MASKGIT_RECORD = {"arch": "maskgit", "val/masked_nll@0.5": 1.25, "val/masked_nll@0.9": 2.5,
                  "val/masked_accuracy@0.5": 0.5, "val/masked_accuracy@0.9": 0.25, "val/unigram_bits": 8.5}


def test_the_report_labels_a_masked_prior_by_its_own_metrics():
    from vqgen.report import markdown, run_curves, summarize

    records = {"prior": MASKGIT_RECORD}
    summary = summarize(records)
    section = markdown(Path("runs/x"), summary, records).split("## Prior")[1].split("![curves]")[0]
    for row in ("| val masked-code NLL, 50% masked (nats; not bits/token) | 1.25 |",
                "| masked-code accuracy, 90% masked | 0.25 |", "| unigram baseline bits/token | 8.5 |"):
        assert row in section
    assert "bits/token |" not in section.replace("unigram baseline bits/token |", "")  # no AR row
    assert summary["prior_arch"] == "maskgit" and summary["prior_val"]["val/masked_nll@0.9"] == 2.5
    assert summary["prior_bits_per_token"] is None
    assert ("prior", "val/masked_nll@0.9", "prior val masked NLL @0.9 (nats)") in run_curves(MASKGIT_RECORD)


def test_the_report_of_an_autoregressive_prior_is_unchanged():
    from vqgen.report import CURVES, markdown, run_curves, summarize

    prior = {"val/bits_per_token": 3.5, "val/unigram_bits": 8.5, "val/accuracy": 0.125}  # written before "arch"
    records = {"prior": prior}
    text = markdown(Path("runs/x"), summarize(records), records)
    for row in ("| val bits/token | 3.5 |", "| unigram baseline bits/token | 8.5 |", "| next-code accuracy | 0.125 |"):
        assert row in text
    assert run_curves(prior) == run_curves({**prior, "arch": "pixelcnn"}) == CURVES


@pytest.mark.slow
def test_the_pipeline_runs_a_maskgit_prior(tmp_path, capsys, fmnist_available):
    from vqgen.pipeline import PipelineConfig, run_pipeline
    from vqgen.preflight import check_pipeline

    toy = ["--data.max_images=256", "--tokenizer.preset=tiny", "--tokenizer.train.steps=8",
           "--tokenizer.train.batch_size=32", "--tokenizer.train.eval_every=8", "--prior.train.steps=8",
           "--prior.train.batch_size=32", "--prior.train.eval_every=8", "--prior.train.warmup_steps=2",
           "--sample.per_class=1", "--sample.batch_size=10", "--eval.inception_n=6", "--eval.ref_n=6",
           "--eval.rfid_n=6", "--eval.recon_n=8", "--eval.use_classifier=false"]
    path = "configs/fashion-mnist-maskgit.yaml"
    # Sampler settings the prior cannot take are refused before stage 1, naming the pipeline's keys.
    for bad, message in ((["--sample.kv_cache=static"], "prior.arch=maskgit: sample.kv_cache is for autoregressive"),
                         (["--sample.steps=1000"], "sample.steps=1000: the prior's 16x16 grid has T=256 codes"),
                         (["--prior.arch=gpt"], "prior.arch=gpt: sample.steps set MaskGIT's parallel decoding")):
        with pytest.raises(VqgenError, match=message):
            check_pipeline(load_config(PipelineConfig, path, [*toy, *bad]))
    cfg = load_config(PipelineConfig, path, toy)
    report = run_pipeline(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]
    assert summary["prior_arch"] == "maskgit" and summary["prior_val"]["val/masked_nll@0.5"] > 0
    assert summary["inception_n_samples"] == 6
    assert "masked-code NLL, 90% masked (nats; not bits/token)" in report.read_text()
