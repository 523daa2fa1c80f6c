"""The whole pipeline at toy scale on real Fashion-MNIST, through the CLI, and its resume."""

import json

import pytest

from vqgen.cli import main

TOY = ["--data.max_images=256", "--tokenizer.preset=tiny", "--tokenizer.train.steps=8",
       "--tokenizer.train.batch_size=32", "--tokenizer.train.eval_every=8", "--prior.train.steps=8",
       "--prior.train.batch_size=32", "--prior.train.eval_every=8", "--prior.train.warmup_steps=2",
       "--sample.per_class=1", "--sample.batch_size=10", "--eval.inception_n=6", "--eval.ref_n=6",
       "--eval.rfid_n=6", "--eval.recon_n=8", "--eval.classifier.train.steps=4",
       "--eval.classifier.data.max_images=256"]


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
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["inception_n_samples"] == 6 and summary["inception_fid"] > 0
    assert "unavailable" in summary["inception_is"]  # fid-helper's network has no logits
    assert summary["prior_bits_per_token"] > 0 and set(summary["stage_seconds"]) >= {"tokenizer", "fid"}
    assert any(k.startswith("classifier FID") for k in summary)
    report = (out / "report.md").read_text()
    assert "![samples](samples/grid.png)" in report and "N = 6" in report
