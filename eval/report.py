"""metrics.json and a Markdown report that states the evaluation protocol next to every number.

An FID means nothing without its protocol (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation"): the network and its weight file, the resize, N of samples and of
reference images, the reference split and its class balance are written beside the scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqgen.runs import atomic_path, write_json


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _class_balance(counts: list[int] | None) -> str:
    if not counts:
        return "unlabelled"
    return f"{len(counts)} classes, {min(counts)}-{max(counts)} images per class"


def protocol_lines(result: dict[str, Any]) -> list[str]:
    """The protocol of one `eval.fid.fid` result, as Markdown bullet lines."""
    ref = result.get("reference_meta") or {}
    lines = [
        f"- network: {result.get('network')}",
        f"- weights: {result.get('weights_source')} `{result.get('weights_path')}` (hash {result.get('weights_sha')})",
        f"- resize: {result.get('resize')}",
        f"- samples: N = {result.get('n_samples')} from `{result.get('samples')}`",
        f"- reference: `{result.get('reference')}`, N = {ref.get('n', 'unknown')}, split = {ref.get('split', 'unknown')}",
        f"- reference class balance: {_class_balance(ref.get('class_counts'))}",
    ]
    if ref.get("data"):
        data = ref["data"]
        lines.append(f"- reference data: {data.get('spec')} at {data.get('image_size')} px, channels = "
                     f"{data.get('channels') or 'as stored'}, resize = {data.get('resize')}")
    if not ref:
        lines.append("- reference protocol: unknown (third-party statistics without a sidecar)")
    return lines


def score_lines(metrics: dict[str, Any]) -> list[str]:
    """Scores first (numbers and 'unavailable' lines), protocol fields left out."""
    skip = {"network", "weights_source", "weights_path", "weights_sha", "resize", "samples", "reference",
            "reference_meta", "n_samples"}
    return [f"| {key} | {_fmt(value)} |" for key, value in metrics.items() if key not in skip]


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """(JSON, Markdown) paths of `out`: X.json gives X.json and X.md beside it, a folder gives
    folder/metrics.json and folder/report.md."""
    out = Path(out)
    if out.suffix == ".json":
        return out, out.with_suffix(".md")
    return out / "metrics.json", out / "report.md"


def write_report(out: str | Path, metrics: dict[str, Any], title: str = "vqgen evaluation") -> Path:
    """The metrics as JSON and a Markdown report (scores, then the protocol) at `report_paths(out)`;
    returns the report's path. `metrics` is an `eval.fid.fid` result, optionally merged with
    classifier and tokenizer metrics."""
    json_path, md_path = report_paths(out)
    write_json(json_path, metrics)
    text = "\n".join([
        f"# {title}", "", "| metric | value |", "|---|---|", *score_lines(metrics), "",
        "## Protocol", "", *protocol_lines(metrics), "",
        "Inception numbers (FID, KID, IS) and classifier numbers (\"classifier FID (<data> CNN)\") come from "
        "different networks and are never comparable with each other.", "",
    ])
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    return md_path
