"""The prior registry: every arch name maps to one entry, and every user-facing list of archs is read from it."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from stage2_prior.registry import ARCHS, PRIORS, prior_kind
from stage2_prior.train import PriorRunConfig, build_prior, train_prior
from stage2_prior.vocab import PriorVocab
from vqgen.cli import main
from vqgen.config import load_config, rule_of
from vqgen.errors import VqgenError

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
