"""`vqgen export`: a tiny pipeline run as a bundle, loaded back by vqgen and by plain transformers."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from core.errors import VqgenError
from core.runs import sha256_file
from sampling.decode import sample
from sampling.generate import SampleConfig
from stage2_prior.load import load_prior
from vqgen.cli import main
from vqgen.export import export_run
from vqgen.generator import locate_generator
from vqgen.report import write_run_report

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # tests/ and tests/vqgen/
from test_cli import one_error_line  # noqa: E402
from tiny_generator import GRID, K, tiny_run  # noqa: E402

# The evaluation records of the run, as the pipeline's stages leave them (numbers of our choosing).
REFERENCE = {"n": 10000, "split": "test", "class_counts": [1000] * 3,
             "data": {"spec": "fashion-mnist", "image_size": 8, "channels": 1, "resize": "auto"}}
RECORDS = {
    "tokenizer": {"val/usage": 90.0},
    "prior": {"arch": "gpt", "val/bits_per_token": 3.25, "val/unigram_bits": 3.9, "val/accuracy": 0.31},
    "reconstruct": {"rfid": 12.5, "rfid_n": 1000, "psnr": 24.1, "ssim": 0.8, "usage": 90.0, "n_images": 64},
    "fid": {"fid": 41.5, "sfid": 50.25, "kid_mean": 0.0123, "kid_std": 0.001, "precision": 0.61, "recall": 0.42,
            "n_samples": 1000, "pr_n": 1000, "pr_k": 3, "network": "TF Inception 2015-12-05 pool3 (2048-d)",
            "weights_source": "fid-helper", "weights_path": "/home/someone/default_1.pt", "weights_sha": "a16e4d",
            "resize": "TF1 bilinear to 299", "samples": "/home/someone/run/samples/images",
            "reference": "data 'fashion-mnist' (test split)", "reference_meta": REFERENCE,
            "real_data": {"n": 1000, "split": "train", "fid": 5.0, "precision": 0.8, "recall": 0.8}},
    "classifier": {"classifier FID (fashion-mnist CNN)": 3.75, "classifier_n_samples": 1000,
                   "classifier_n_reference": 10000, "classifier_reference_split": "test",
                   "classifier_sha256": "ab" * 32, "val/accuracy": 0.9},
}


def finished_run(root: Path) -> Path:
    """A tiny run with samples and the evaluation records of every stage, as after `vqgen pipeline`."""
    run = tiny_run(root)
    sample(run / "prior" / "model", run / "tokenizer" / "model", SampleConfig(n=3, top_k=5), run / "samples")
    write_run_report(run, RECORDS)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def bundle(run):
    return export_run(run, run.parent / "tiny-bundle")


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def front_matter(card: Path) -> dict:
    _, meta, _ = card.read_text().split("---\n", 2)
    return yaml.safe_load(meta)


def test_the_bundle_holds_the_models_checksums_card_and_grid_only(run, bundle):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == ["README.md", "bundle.json", "prior/config.json", "prior/generation_config.json",
                     "prior/model.safetensors", "prior/vqgen_prior.json", "samples.png", "tokenizer/config.json",
                     "tokenizer/model.safetensors", "tokenizer/vqgen_tokenizer.json"]  # no checkpoints
    record = json.loads((bundle / "bundle.json").read_text())
    assert record["files"] == {name: sha256_file(bundle / name) for name in files if "/" in name}
    for name in record["files"]:
        model, _, file = name.partition("/")
        assert sha256_file(run / model / "model" / file) == record["files"][name]  # copies, byte for byte
    assert record["models"]["prior"] | {"arch": "gpt", "codebook_size": K, "grid": [GRID, GRID],
                                        "loads_with": "transformers.AutoModelForCausalLM"} == record["models"]["prior"]
    assert record["metrics"]["inception_fid"] == 41.5


def test_sampling_from_the_bundle_equals_sampling_from_the_run(tmp_path, run, bundle, capsys):
    found = locate_generator(bundle)
    assert (found.prior, found.tokenizer) == (bundle / "prior", bundle / "tokenizer")
    for name, given in (("bundle", ["--run", str(bundle)]), ("run", ["--run", str(run)]),
                        ("pair", ["--prior", str(run / "prior"), "--tokenizer", str(run / "tokenizer")])):
        assert main(["sample", *given, "--out", str(tmp_path / name), "--n", "2", "--top-k", "5"]) == 0
    codes = {name: np.load(tmp_path / name / "codes.npz")["codes"] for name in ("bundle", "run", "pair")}
    assert np.array_equal(codes["bundle"], codes["run"]) and np.array_equal(codes["bundle"], codes["pair"])
    assert "samples:" in capsys.readouterr().out


@pytest.mark.parametrize("given, words", [
    (["--run", "R", "--prior", "P"], "--run and --prior both name a generator"),
    (["--prior", "P"], "no generator given; pass --run WHERE"),
    ([], "no generator given"),
])
def test_sample_takes_run_or_prior_and_tokenizer(tmp_path, capsys, given, words):
    assert main(["sample", *given, "--out", str(tmp_path / "s")]) == 2
    assert words in one_error_line(capsys, "sample")
    assert not (tmp_path / "s").exists()


def test_the_card_has_hub_metadata_metrics_with_their_protocol_and_usage(bundle):
    meta = front_matter(bundle / "README.md")
    assert meta["library_name"] == "vqgen" and meta["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert {"vqgen", "gpt-prior", "class-conditional"} <= set(meta["tags"])
    [entry] = meta["model-index"]
    metrics = {(m["type"], r["dataset"]["split"]): m for r in entry["results"] for m in r["metrics"]}
    fid = metrics["fid", "test"]
    assert fid["value"] == 41.5 and fid["args"] == {"n_samples": 1000, "n_reference": 10000, "reference_split": "test",
                                                    "network": RECORDS["fid"]["network"]}
    assert metrics["kid", "test"]["value"] == 0.0123 and metrics["precision", "test"]["value"] == 0.61
    assert metrics["classifier-fid", "test"]["value"] == 3.75 and metrics["rfid", "val"]["value"] == 12.5
    assert metrics["bits-per-token", "val"]["value"] == 3.25
    text = (bundle / "README.md").read_text()
    for words in ("![samples](samples.png)", 'AutoModelForCausalLM.from_pretrained("tiny-bundle/prior")',
                  "vqgen sample --run tiny-bundle", "hf upload OWNER/NAME tiny-bundle", "41.5 (real data at N = 1,000: 5)",
                  "drawn with cfg_scale = 1.0, ", "top_k = 5"):
        assert words in text, words
    assert "/home/someone" not in text  # the evaluating machine's paths stay out of a public card


def test_an_unevaluated_unconditional_pixelcnn_run_gets_a_card_that_says_so(tmp_path):
    bundle = export_run(tiny_run(tmp_path / "run", arch="pixelcnn", num_classes=0), tmp_path / "b")
    meta, text = front_matter(bundle / "README.md"), (bundle / "README.md").read_text()
    assert "model-index" not in meta and not (bundle / "samples.png").exists() and "Not measured" in text
    assert meta["pipeline_tag"] == "unconditional-image-generation" and "unconditional" in meta["tags"]
    # Not a transformers causal LM: the card does not offer the plain-transformers recipe.
    assert json.loads((bundle / "bundle.json").read_text())["models"]["prior"]["loads_with"] == "vqgen"
    assert "AutoModelForCausalLM" not in text and 'load_prior("b/prior")' in text


@pytest.mark.parametrize("change, words", [
    ("flip", "prior/model.safetensors: its sha256 differs from bundle.json's"),
    ("delete", "tokenizer/config.json: missing (bundle.json lists it)"),
    ("add", "prior/extra.bin: not listed in bundle.json"),
])
def test_a_changed_bundle_is_refused_naming_the_file(tmp_path, bundle, capsys, change, words):
    copy = copy_of(bundle, tmp_path)
    if change == "flip":
        weights = copy / "prior" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # one bit of the last weight: the file still loads, with another model
        weights.write_bytes(bytes(data))
    elif change == "delete":
        (copy / "tokenizer" / "config.json").unlink()
    else:
        (copy / "prior" / "extra.bin").write_bytes(b"x")
    with pytest.raises(VqgenError, match=re.escape(f"{copy}/{words}")):
        locate_generator(copy)
    assert main(["sample", "--run", str(copy), "--out", str(tmp_path / "s"), "--n", "1"]) == 2
    assert words in one_error_line(capsys, "sample")
    assert not (tmp_path / "s").exists()


def test_export_refuses_an_unfinished_run_or_a_foreign_out_before_writing(tmp_path, run, capsys):
    partial = Path(shutil.copytree(run, tmp_path / "partial"))
    (partial / "stages" / "prior.json").unlink()
    assert main(["export", "--run", str(partial), "--out", str(tmp_path / "b")]) == 2
    assert "has not finished its prior stage" in one_error_line(capsys, "export")
    assert main(["export", "--run", str(run / "samples"), "--out", str(tmp_path / "b")]) == 2
    assert "not a pipeline run (no stages/)" in one_error_line(capsys, "export")
    assert not (tmp_path / "b").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "mine")]) == 2
    assert "files vqgen did not write (notes.txt)" in one_error_line(capsys, "export")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "b"), "--x=1"]) == 2
    assert "vqgen export has no settings" in one_error_line(capsys, "export")


def test_export_again_replaces_its_own_bundle(tmp_path, run, capsys):
    out = tmp_path / "b"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    (out / "prior" / "extra.bin").write_bytes(b"x")  # a bundle spoiled since: exporting again makes it whole
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert f"bundle: {out}" in capsys.readouterr().out
    assert locate_generator(out).prior == out / "prior"


def test_the_gpt_prior_in_the_bundle_loads_with_plain_transformers(bundle):
    """The card's plain-transformers recipe on the bundle's copy. (That a saved GPT prior needs no vqgen
    at all is checked in a process that never imports it, by tests/stage2_prior/test_gpt.py; a second
    such process here would cost seconds of start-up for the same check.)"""
    plain = AutoModelForCausalLM.from_pretrained(bundle / "prior").eval()
    ids = torch.cat([torch.tensor([[K], [K + 1]]), torch.randint(0, K, (2, GRID * GRID - 1))], dim=1)
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, load_prior(bundle / "prior").model(input_ids=ids).logits)
        codes = plain.generate(ids[:, :1], max_new_tokens=GRID * GRID, do_sample=True)[:, 1:]
    assert codes.shape == (2, GRID * GRID) and bool((codes < K).all()), "plain generate() must only emit codes"


def test_the_bundle_keeps_no_path_of_the_exporting_machine(tmp_path):
    run = finished_run(tmp_path / "run")
    private = tmp_path / "alice" / "private-photos"
    record = run / "tokenizer" / "model" / "vqgen_tokenizer.json"
    tokenizer_record = json.loads(record.read_text())
    tokenizer_record["data"]["spec"] = f"folder:{private}"
    record.write_text(json.dumps(tokenizer_record))
    meta = run / "prior" / "model" / "vqgen_prior.json"
    prior_record = json.loads(meta.read_text())
    prior_record["codes_meta"] = {"tokenizer_path": str(run / "tokenizer" / "model"), "data": {"spec": f"folder:{private}"}}
    meta.write_text(json.dumps(prior_record))
    bundle = export_run(run, tmp_path / "bundle")
    text = "".join(p.read_text() for p in bundle.rglob("*") if p.suffix in (".json", ".md"))
    assert str(tmp_path) not in text
    assert json.loads((bundle / "tokenizer" / "vqgen_tokenizer.json").read_text())["data"]["spec"] == "folder:private-photos"
    assert json.loads((bundle / "prior" / "vqgen_prior.json").read_text())["codes_meta"]["tokenizer_path"] == "tokenizer"
    assert locate_generator(bundle).prior == bundle / "prior"  # the checksums are the rewritten files'
