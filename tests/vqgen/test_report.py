import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.runs import MetricsLog
from vqgen.report import CURVES, GAN_CURVES, gan_curves, markdown, plot_curves, summarize

CLASSIFIER = {"classifier FID (fashion-mnist CNN)": 3.25, "classifier IS (fashion-mnist CNN)": 7.5,
              "classifier_sha256": "0123456789abcdef" * 4, "classifier_n_samples": 1000,
              "classifier_n_reference": 10000, "classifier_reference_split": "test", "val/accuracy": 0.9}


def test_report_states_the_classifier_protocol():
    records = {"fid": {"fid": 12.0, "is": "IS: unavailable (no Inception logits in fid-helper)"},
               "classifier": CLASSIFIER}
    text = markdown(Path("runs/demo"), summarize(records), records)
    section = text.split("## Samples, small-data classifier")[1].split("## Tokenizer")[0]
    for row in ("| classifier FID (fashion-mnist CNN) | 3.25 |", "| classifier samples scored (N) | 1000 |",
                "| classifier reference images (N) | 10000 |", "| classifier reference split | test |",
                "| classifier sha256 | `0123456789ab` |", "| classifier test accuracy | 0.9 |"):
        assert row in section


def test_report_without_a_classifier_has_no_classifier_section():
    records = {"fid": {"fid": 12.0}}
    assert "small-data classifier" not in markdown(Path("runs/demo"), summarize(records), records)


def test_numbers_have_four_significant_digits_and_missing_ones_a_dash():
    records = {"fid": {"fid": 12.345678, "kid_mean": 0.000123456, "is_mean": 3.0, "is_std": 0.25},
               "reconstruct": {"psnr": 25.0}, "tokenizer": {"seconds": 61.23456}}
    text = markdown(Path("runs/demo"), summarize(records), records)
    for row in ("| FID | 12.35 |", "| KID (mean) | 0.0001235 |", "| KID (std) | — |", "| IS | 3 ± 0.25 |",
                "| PSNR (dB) | 25 |", "| rFID (Inception) | — |", "| tokenizer | 61.23 |"):
        assert row in text


def test_curves_png_is_a_row_of_one_plot_per_curve(tmp_path):
    run = tmp_path / "run"
    MetricsLog(run / "tokenizer" / "metrics.jsonl").append({"step": 1, "train/loss": 2.0})
    MetricsLog(run / "tokenizer" / "metrics.jsonl").append({"step": 2, "train/loss": 1.0})
    plot_curves(run, tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG" and im.size == (100 * 4 * len(CURVES), 100 * 3)  # 4 x 3 inches each at 100 dpi


def test_importing_the_report_leaves_matplotlib_backend_alone():
    # A user's notebook or GUI keeps its backend: the report draws on its own Agg canvas.
    code = "import vqgen.report, matplotlib; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_a_tokenizer_trained_with_a_discriminator_gets_its_gan_curves(tmp_path):
    log = MetricsLog(tmp_path / "tokenizer" / "metrics.jsonl")
    log.append({"step": 1, "train/loss": 2.0})
    assert gan_curves(tmp_path) == []
    for step in (2, 3):
        log.append({"step": step, "train/loss": 1.0, "train/g_loss": -0.1, "train/d_loss": 0.9, "train/logits_real": 0.2,
                    "train/logits_fake": -0.2, "train/adaptive_weight": 0.5})
    assert gan_curves(tmp_path) == GAN_CURVES
    plot_curves(tmp_path, tmp_path / "curves.png", CURVES + gan_curves(tmp_path))
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size == (100 * 4 * (len(CURVES) + len(GAN_CURVES)), 100 * 3)
