"""The pipeline's run report: metrics.json, curves.png and report.md, from the stage records.

Inception scores, classifier scores and tokenizer scores come from different networks and data;
the report keeps them in separate tables so no reader mixes them. A two-level tokenizer's run
(VQ-VAE-2) adds each level's usage and the prior's bits/token per level, and the reconstructions from
the top codes alone beside the full ones; a one-level run's report is as it was before levels existed.
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

from core.code_grids import LEVEL_NAMES
from core.markdown import cell, table
from core.runs import MetricsLog, atomic_path, write_json
from eval.recon import TOP_ONLY_PNG
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
    plot_curves(out, out / "curves.png", run_curves(records.get("prior", {}), run_levels(records)) + gan_curves(out))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(out, summary, records))
    return out / "report.md"


def prior_objective(prior: dict[str, Any]) -> Objective:
    """The objective of the run's prior, which says what its metrics are (a record written before
    the arch was recorded is a GPT's or a PixelCNN's: next-code metrics either way)."""
    return prior_kind(prior.get("arch", "gpt")).objective


def run_curves(prior: dict[str, Any], levels: tuple[str, ...] = ()) -> list[tuple[str, str | tuple[str, ...], str]]:
    """CURVES with the prior's own val curve: bits/token, or a masked prior's masked-code NLL; with two
    `levels`, each val curve also draws each level's (`val/top/usage`, `val/bottom/bits_per_token`, ...)."""
    key, title = prior_objective(prior).curve
    curves = [("prior", key, title) if curve[1] == "val/bits_per_token" else curve for curve in CURVES]
    return [(stage, (metric, *(level_metric(metric, lv) for lv in levels)), name)
            if levels and metric.startswith("val/") else (stage, metric, name) for stage, metric, name in curves]


def run_levels(records: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The tokenizer's level names when it has two (its records hold `top/usage`, ...), else ()."""
    tok, recon = records.get("tokenizer", {}), records.get("reconstruct", {})
    return tuple(lv for lv in LEVEL_NAMES[2] if f"{lv}/usage" in recon or f"val/{lv}/usage" in tok)


def level_metric(key: str, level: str) -> str:
    """A metric's name for one level: val/bits_per_token -> val/top/bits_per_token, usage -> top/usage."""
    prefix, _, name = key.rpartition("/")
    return f"{prefix}/{level}/{name}" if prefix else f"{level}/{name}"


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
    levels = run_levels(records)
    if levels:
        summary["levels"] = {lv: level_summary(lv, tok, recon, prior) for lv in levels}
    summary.update({k: v for k, v in clf.items() if k.startswith("classifier ")})
    return summary


def level_summary(level: str, tok: dict[str, Any], recon: dict[str, Any], prior: dict[str, Any]) -> dict[str, Any]:
    """One level's headline numbers: its codebook usage and perplexity (the reconstruct stage's, over the
    val split, else the tokenizer's last val pass) and the prior's val bits/token on its codes."""
    def tokenizer_value(name: str) -> Any:
        return recon.get(level_metric(name, level), tok.get(level_metric(f"val/{name}", level)))

    return {"tokenizer_usage_pct": tokenizer_value("usage"), "tokenizer_perplexity": tokenizer_value("perplexity"),
            "prior_bits_per_token": prior.get(level_metric("val/bits_per_token", level)),
            "unigram_bits_per_token": prior.get(level_metric("val/unigram_bits", level))}


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
    lines += ["## Tokenizer", "", "![reconstructions](reconstructions.png)", "", *_top_only_lines(out, summary),
              *table([("rFID (Inception)", summary["rfid"]), ("rFID images", summary["rfid_n"]),
                      ("PSNR (dB)", summary["tokenizer_psnr"]), ("SSIM", summary["tokenizer_ssim"]),
                      *_usage_rows(summary)]),
              "## Prior", "",
              *table(_prior_rows(records.get("prior", {}), tuple(summary.get("levels", ())))),
              "![curves](curves.png)", "", "## Time", "",
              *table(summary["stage_seconds"].items(), header=("stage", "seconds"))]
    return "\n".join(lines)


def _top_only_lines(out: Path, summary: dict[str, Any]) -> list[str]:
    """Two levels: the reconstructions from the top codes alone, under the full ones."""
    if "levels" not in summary or not (out / TOP_ONLY_PNG).is_file():
        return []
    return ["Two levels: in each group of three rows, val images, their full reconstructions, and their "
            "reconstructions from the top codes alone (every bottom code set to the most frequent one): what the "
            "top level holds.", "", f"![top-only reconstructions]({TOP_ONLY_PNG})", ""]


def _usage_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """Codebook usage: one row, or each level's usage and perplexity."""
    if "levels" not in summary:
        return [("codebook usage %", summary["tokenizer_usage_pct"])]
    return [row for lv, values in summary["levels"].items() for row in
            ((f"codebook usage % ({lv})", values["tokenizer_usage_pct"]),
             (f"code perplexity ({lv})", values["tokenizer_perplexity"]))]


def _prior_rows(prior: dict[str, Any], levels: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The prior's report rows, each followed by each level's value where the prior logged one."""
    rows = []
    for key, label in prior_objective(prior).report_rows:
        rows.append((label, prior.get(key)))
        rows += [(f"{label} ({lv})", prior[level_metric(key, lv)]) for lv in levels if level_metric(key, lv) in prior]
    return rows
