"""Run folders: atomic writes, file hashes, metrics.jsonl and finished-stage markers.

Nothing a run writes may be lost or half-written when it is killed: every file and folder is
written under a temporary name in the same directory and renamed into place, which POSIX makes
atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vqgen.errors import VqgenError


@contextmanager
def atomic_path(final: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it to `final` (replacing it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a finished run folder should read like any other
    target = tmp if is_dir else tmp / final.name
    try:
        yield target
        if is_dir:
            _replace(tmp, final)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, dst: Path) -> None:
    """Rename a directory over another: move the old one aside first, then drop it."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise VqgenError(f"{path}: {what} not found; check the path")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VqgenError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); rewrite or delete it") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class MetricsLog:
    """Append-only `metrics.jsonl`. On resume, lines past the resumed step are dropped so a
    resumed run leaves the same file as an uninterrupted one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def run_stage(run_dir: Path, name: str, body: Callable[[], dict[str, Any]],
              settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `body` once: its result is recorded in `run_dir/stages/<name>.json` with the `settings`
    it ran with, and a later call with the same name returns that record instead of running again."""
    record = finished_record(run_dir, name, settings)
    if record is not None:
        return {**record, "skipped": True}
    result = body()
    write_json(_marker(run_dir, name), {**result, "settings": _as_stored(settings)} if settings is not None else result)
    return result


def finished_record(run_dir: Path, name: str, settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The record of a finished stage, None if it has not finished. A stage finished with other
    `settings` is refused: reusing it would report results of settings that never ran."""
    marker = _marker(run_dir, name)
    if not marker.exists():
        return None
    record = read_json(marker, "stage record")
    done_with = record.pop("settings", None)
    changed = _changed_keys(done_with, _as_stored(settings)) if None not in (done_with, settings) else []
    if changed:
        raise VqgenError(
            f"{marker}: the {name} stage finished with other settings ({', '.join(changed[:4])}); "
            f"pass a new --out, or delete {run_dir / name} and {marker} (and the later stages') to redo it"
        )
    return record


def _marker(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "stages" / f"{name}.json"


def _as_stored(settings: dict[str, Any] | None) -> Any:
    return json.loads(json.dumps(settings, default=str))  # tuples become lists, as in the JSON file


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, old -> new."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(old.keys() | new.keys())
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old} -> {new}"]
