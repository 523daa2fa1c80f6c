"""metrics.json and a Markdown report that states the evaluation protocol next to every number.

An FID means nothing without its protocol (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation"): the network and its weight file, the resize, N of samples and of
reference images, the reference split and its class balance are written beside the scores. Each
score the real-data floor (eval/floor.py) has too is written with it, as in
"41.2000 (real data at N = 1,000: 19.5000)".
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import VqgenError
from core.markdown import cell, table
from core.runs import OutputLock, atomic_path, write_json

REPORT_KEYS = ("fid", "network", "weights_sha", "reference")  # what every `vqgen fid` report holds
FLOOR_KEYS = ("fid", "sfid", "kid_mean", "precision", "recall", "density", "coverage")  # scores the floor has
# What `vqgen fid` prints, in this order: the scores, then why a score is missing.
LINE_KEYS = ("fid", "sfid", "kid_mean", "kid_std", "kid", "precision", "recall", "density", "coverage",
             "precision_recall", "is_mean", "is_std", "is", "n_samples")
PROTOCOL_KEYS = {"network", "weights_source", "weights_path", "weights_sha", "resize", "samples", "reference",
                 "reference_meta", "n_samples", "pr_n", "pr_k", "real_data"}


def _class_balance(counts: list[int] | None) -> str:
    if not counts:
        return "unlabelled"
    return f"{len(counts)} classes, {min(counts)}-{max(counts)} images per class"


def with_floor(result: dict[str, Any], key: str, float_format: str = ".4f") -> Any:
    """result[key], written with the real-data floor's own value where it has one:
    '41.2000 (real data at N = 1,000: 19.5000)'."""
    value, floor = result.get(key), result.get("real_data")
    if key in FLOOR_KEYS and isinstance(value, float) and isinstance(floor, dict) and isinstance(floor.get(key), float):
        return f"{value:{float_format}} (real data at N = {floor['n']:,}: {floor[key]:{float_format}})"
    return value


def score_line(result: dict[str, Any]) -> str:
    """The one line `vqgen fid` prints: every score, with the floor's beside it, and why one is missing."""
    parts = [f"{key}: {cell(with_floor(result, key), '.4f')}" for key in LINE_KEYS if key in result]
    if isinstance(result.get("real_data"), str):
        parts.append(result["real_data"])
    return "  ".join(parts)


def _method_lines(result: dict[str, Any]) -> list[str]:
    """How sFID, the nearest-neighbour metrics and the floor were measured, where they were."""
    lines = []
    if isinstance(result.get("sfid"), float):
        lines.append("- sFID: the first 7 channels of mixed_6/conv (17x17 each), as the ADM evaluator")
    if result.get("pr_n"):
        lines.append(f"- precision/recall, density/coverage: k = {result.get('pr_k')} nearest neighbours, "
                     f"N = {result['pr_n']:,} images a side (a seeded random subset of the larger side)")
    floor = result.get("real_data")
    if isinstance(floor, dict):
        lines.append(f"- real data: the first N = {floor['n']:,} {floor['split']} images of the reference's data, "
                     "scored as the samples against the same reference")
    elif isinstance(floor, str):
        lines.append(f"- {floor}")
    return lines


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
    return lines + _method_lines(result)


def score_rows(metrics: dict[str, Any], float_format: str = ".4f") -> list[tuple[str, Any]]:
    """The scores (numbers, with the floor's beside them, and 'unavailable' lines), protocol fields
    left out."""
    return [(key, with_floor(metrics, key, float_format)) for key in metrics if key not in PROTOCOL_KEYS]


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
    classifier and tokenizer metrics. A failed write (a full disk, a path taken meanwhile) is one line."""
    json_path, md_path = report_paths(out)
    text = "\n".join([
        f"# {title}", "", *table(score_rows(metrics), float_format=".4f"),
        "## Protocol", "", *protocol_lines(metrics), "",
        "Inception numbers (FID, sFID, KID, precision/recall, density/coverage, IS) and classifier numbers (\"classifier FID (<data> CNN)\") come from "
        "different networks and are never comparable with each other.", "",
    ])
    with written(json_path, "the report's metrics"):
        write_json(json_path, metrics)
    with written(md_path, "the report"), atomic_path(md_path) as tmp:
        tmp.write_text(text)
    return md_path


def check_report_out(out: str | Path) -> None:
    """Refuse, before any work, a `write_report` destination that cannot be written or holds files
    that are not an earlier `vqgen fid` report (recognised by the keys of its JSON)."""
    if Path(out).suffix == ".md" or (Path(out).suffix != ".json" and Path(out).is_file()):
        raise VqgenError(f"{out}: pass --out NAME.json (NAME.md is written beside it) or a folder")
    json_path, md_path = report_paths(out)
    check_output_file(json_path, lambda p: json_has_keys(p, REPORT_KEYS), "a `vqgen fid` report")
    check_output_file(md_path, lambda p: json_has_keys(json_path, REPORT_KEYS), "the Markdown of a `vqgen fid` report")


def claim_report(out: str | Path) -> OutputLock:
    """`check_report_out`, then lock the report for this process (released by `with`, else at exit)."""
    check_report_out(out)
    return claim_file(report_paths(out)[0])


def claim_file(path: Path) -> OutputLock:
    """Lock the output file `path` (`.NAME.lock` beside it, core.runs.OutputLock): a second vqgen
    process writing it is refused in one line, and two writers never mix their files."""
    lock = OutputLock(path)
    lock.acquire()
    return lock


@contextmanager
def written(path: Path, what: str) -> Iterator[None]:
    """An OSError while writing `path` becomes one line naming it: the work is done, only the file is lost."""
    try:
        yield
    except OSError as err:
        raise VqgenError(f"{path}: {what} could not be written ({err.strerror or err}); fix that (space, "
                         "permissions, a folder in the way) or pass another --out") from None


def check_output_file(path: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse, in one line, an output file that could not be written or must not be replaced: a
    folder at its path, a missing parent that cannot be made, a folder that cannot be written, an
    existing file that `ours` does not recognise as `what` (an earlier output of the same command),
    or one marked read-only."""
    if path.is_dir():
        raise VqgenError(f"{path}: is a folder, and {what} is a file; pass another --out")
    if path.exists() or path.is_symlink():
        if not ours(path):
            raise VqgenError(f"{path}: exists and is not {what}; vqgen replaces only its own outputs: "
                             "move it away or pass another --out")
        if not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise VqgenError(f"{path}: is read-only; make it writable (chmod u+w) or pass another --out")
    _check_folder(path)


def _check_folder(path: Path) -> None:
    """The nearest existing folder above `path` must be a writable folder; where it is the parent,
    a temporary file named as the writer will name its own is made and removed, which also finds a
    read-only file system or a name too long."""
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        made = "" if folder == path.absolute().parent else f", so {path.parent} cannot be made"
        raise VqgenError(f"{folder}: is a file, not a folder{made}; pass another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VqgenError(f"{folder}: this folder is not writable; pass another --out")
    if folder == path.absolute().parent:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp"):
                pass
        except OSError as err:
            raise VqgenError(f"{path}: cannot be written ({err.strerror}); pass another --out") from None


def json_has_keys(path: Path, keys: Collection[str]) -> bool:
    """Whether `path` is a small JSON object holding every one of `keys` (how vqgen knows its own
    files from a user's)."""
    try:
        if path.stat().st_size > 1 << 24:
            return False
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and all(key in found for key in keys)
