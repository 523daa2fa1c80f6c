"""The pipeline's run report: metrics.json, curves.png and report.md, from the stage records.

Inception scores, classifier scores and tokenizer scores come from different networks and data;
the report keeps them in separate tables so no reader mixes them.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.markdown import cell, table
from core.runs import MetricsLog, atomic_path, write_json
from eval.report import protocol_lines, with_floor
from stage2_prior.registry import Objective, prior_kind

PACKAGES = ("vqgen", "torch", "torchvision", "transformers", "accelerate", "datasets", "torchmetrics")
# Inception scores in report.md, each with the real-data floor's beside it where it has one.
INCEPTION_ROWS = [("FID", "fid"), ("sFID", "sfid"), ("KID (mean)", "kid_mean"), ("KID (std)", "kid_std"),
                  ("precision", "precision"), ("recall", "recall"), ("density", "density"), ("coverage", "coverage")]
CURVES = [("tokenizer", "train/loss", "tokenizer train loss"), ("tokenizer", "val/usage", "tokenizer val usage %"),
          ("prior", "val/bits_per_token", "prior val bits/token"), ("prior", "train/loss", "prior train NLL (nats)")]
# Drawn when the tokenizer trained with a discriminator (VQGAN's loss); a tuple of keys shares one plot.
GAN_CURVES = [("tokenizer", ("train/g_loss", "train/d_loss"), "tokenizer GAN losses"),
              ("tokenizer", ("train/logits_real", "train/logits_fake"), "discriminator logits"),
              ("tokenizer", "train/adaptive_weight", "adversarial weight (VQGAN eq. 7)")]


def write_run_report(out: Path, records: dict[str, dict[str, Any]]) -> Path:
    """Write OUT/metrics.json, OUT/curves.png and OUT/report.md; return report.md's path."""
    summary = summarize(records)
    write_json(out / "metrics.json", {"summary": summary, "stages": records, "versions": versions(),
                                      "machine": machine()})
    plot_curves(out, out / "curves.png", run_curves(records.get("prior", {})) + gan_curves(out))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(out, summary, records))
    return out / "report.md"


def prior_objective(prior: dict[str, Any]) -> Objective:
    """The objective of the run's prior, which says what its metrics are (a record written before
    the arch was recorded is a GPT's or a PixelCNN's: next-code metrics either way)."""
    return prior_kind(prior.get("arch", "gpt")).objective


def run_curves(prior: dict[str, Any]) -> list[tuple[str, str, str]]:
    """CURVES with the prior's own val curve: bits/token, or a masked prior's masked-code NLL."""
    key, title = prior_objective(prior).curve
    return [("prior", key, title) if curve[1] == "val/bits_per_token" else curve for curve in CURVES]


def gan_curves(run: Path) -> list[tuple[str, str | tuple[str, ...], str]]:
    """GAN_CURVES when the run's tokenizer trained a discriminator, else none."""
    rows = MetricsLog(run / "tokenizer" / "metrics.jsonl").read()
    return GAN_CURVES if any("train/d_loss" in r for r in rows) else []


def summarize(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers, named for what they are."""
    tok, prior = records.get("tokenizer", {}), records.get("prior", {})
    fid, recon, clf = records.get("fid", {}), records.get("reconstruct", {}), records.get("classifier", {})
    summary = {
        "inception_fid": fid.get("fid"), "inception_kid_mean": fid.get("kid_mean"), "inception_kid_std": fid.get("kid_std"),
        "inception_is": fid.get("is_mean", fid.get("is")), "inception_n_samples": fid.get("n_samples"),
        **{f"inception_{key}": fid.get(key) for key in ("sfid", "precision", "recall", "density", "coverage")},
        "inception_real_data": fid.get("real_data"),  # the same scores for N real images (eval/floor.py)
        "rfid": recon.get("rfid"), "rfid_n": recon.get("rfid_n"), "tokenizer_psnr": recon.get("psnr"),
        "tokenizer_ssim": recon.get("ssim"), "tokenizer_usage_pct": recon.get("usage", tok.get("val/usage")),
        "prior_bits_per_token": prior.get("val/bits_per_token"), "unigram_bits_per_token": prior.get("val/unigram_bits"),
        "prior_accuracy": prior.get("val/accuracy"), "prior_arch": prior.get("arch"),
        "prior_val": {key: prior.get(key) for key, _ in prior_objective(prior).report_rows},
        "stage_seconds": {name: r.get("seconds") for name, r in records.items()},
    }
    summary.update({k: v for k, v in clf.items() if k.startswith("classifier ")})
    return summary


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found | {"python": platform.python_version()}


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu}


def plot_curves(run: Path, path: Path, curves: list[tuple[str, str | tuple[str, ...], str]] = CURVES) -> None:
    """Tokenizer loss and usage, prior val NLL, against steps: (stage, metric key or keys, title) each."""
    # A figure on its own Agg canvas, not pyplot: files only, never a window, and no global backend
    # switched for whoever imported vqgen.
    fig = Figure(figsize=(4 * len(curves), 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(curves))
    for ax, (stage, keys, title) in zip(axes, curves):
        rows = MetricsLog(run / stage / "metrics.jsonl").read()
        for key in (keys,) if isinstance(keys, str) else keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=key.removeprefix("train/"))
        if not isinstance(keys, str):
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _classifier_protocol(clf: dict[str, Any]) -> list[tuple[str, Any]]:
    """Classifier numbers are comparable only with the same classifier file, N and reference split."""
    sha = clf.get("classifier_sha256")
    return [("classifier test accuracy", clf.get("val/accuracy")),
            ("classifier samples scored (N)", clf.get("classifier_n_samples")),
            ("classifier reference images (N)", clf.get("classifier_n_reference")),
            ("classifier reference split", clf.get("classifier_reference_split")),
            ("classifier sha256", f"`{sha[:12]}`" if sha else None)]


def markdown(out: Path, summary: dict[str, Any], records: dict[str, dict[str, Any]]) -> str:
    fid = records.get("fid", {})
    is_line = fid.get("is") if isinstance(fid.get("is"), str) else f"{cell(fid.get('is_mean'))} ± {cell(fid.get('is_std'))}"
    lines = [f"# vqgen run: {out.name}", "", "![samples](samples/grid.png)", "",
             "## Samples, Inception network", "",
             *table([(label, with_floor(fid, key, ".4g")) for label, key in INCEPTION_ROWS]
                    + [("IS", is_line), ("samples scored", summary["inception_n_samples"])]
                    + ([("precision/recall", fid["precision_recall"])] if "precision_recall" in fid else [])),
             *protocol_lines(fid), ""]
    classifier = [(k, v) for k, v in summary.items() if k.startswith("classifier ")]
    if classifier:
        lines += ["## Samples, small-data classifier (not comparable with Inception numbers)", "",
                  *table(classifier + _classifier_protocol(records["classifier"]))]
    lines += ["## Tokenizer", "", "![reconstructions](reconstructions.png)", "",
              *table([("rFID (Inception)", summary["rfid"]), ("rFID images", summary["rfid_n"]),
                      ("PSNR (dB)", summary["tokenizer_psnr"]), ("SSIM", summary["tokenizer_ssim"]),
                      ("codebook usage %", summary["tokenizer_usage_pct"])]),
              "## Prior", "",
              *table([(label, records.get("prior", {}).get(key)) for key, label in
                      prior_objective(records.get("prior", {})).report_rows]),
              "![curves](curves.png)", "", "## Time", "",
              *table(summary["stage_seconds"].items(), header=("stage", "seconds"))]
    return "\n".join(lines)
