"""locate_generator: a pipeline run folder, and every way of naming no generator at all.

Bundles (written by `vqgen export`) are tested in test_export.py.
"""

import shutil
import sys
from pathlib import Path

import pytest

from core.errors import VqgenError
from sampling.decode import check_pair
from stage1_vqvae.load import load_tokenizer
from stage2_prior.load import load_prior
from vqgen.generator import locate_generator

sys.path.insert(0, str(Path(__file__).parents[1]))  # the tests/ folder
from tiny_generator import tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("gen") / "run")


def test_a_pipeline_run_gives_its_model_folders(run):
    found = locate_generator(run)
    assert (found.prior, found.tokenizer, found.source) == (run / "prior" / "model", run / "tokenizer" / "model", str(run))
    prior = load_prior(found.prior)
    check_pair(prior, found.prior, load_tokenizer(found.tokenizer))  # they belong together


@pytest.mark.parametrize("stage", ["tokenizer", "prior"])
def test_an_unfinished_run_is_refused_naming_the_stage(tmp_path, run, stage):
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "stages" / f"{stage}.json").unlink()
    with pytest.raises(VqgenError, match=rf"partial: the pipeline run has not finished its {stage} stage"):
        locate_generator(partial)


def test_a_finished_stage_without_its_model_is_refused(tmp_path, run):
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "prior" / "model" / "model.safetensors").unlink()
    with pytest.raises(VqgenError, match=r"prior/model: model.safetensors is missing"):
        locate_generator(partial)


def test_what_is_not_a_generator_is_one_line(tmp_path, run):
    (tmp_path / "notes.txt").write_text("hello")
    cases = {tmp_path: "neither a pipeline run", tmp_path / "notes.txt": "is a file", tmp_path / "gone": "no such folder",
             run / "prior": "neither a pipeline run", "./gone": "no such folder"}
    for where, words in cases.items():
        with pytest.raises(VqgenError, match=words) as refused:
            locate_generator(where)
        assert str(refused.value).startswith(f"{where}: ") and "\n" not in str(refused.value)


def test_a_hub_id_offline_says_so_in_one_line():
    # tests/conftest.py sets HF_HUB_OFFLINE: nothing is downloaded, and the cache has no such repo.
    with pytest.raises(VqgenError, match=r"^vqgen-tests/no-such-bundle: no such local folder, and the Hub cannot be "
                                         r"reached \(offline, or HF_HUB_OFFLINE is set\)"):
        locate_generator("vqgen-tests/no-such-bundle")
