"""Run folders: atomic writes, file hashes, metrics.jsonl, finished-stage markers, and the claim
every command makes on the output it writes.

Nothing a run writes may be lost or half-written when it is killed: every file and folder is
written under a temporary name in the same directory and renamed into place, which POSIX makes
atomic. Nothing vqgen did not write is ever replaced: `claim_output` checks and locks an output
before any work.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError

from core.distributed import process_state
from core.errors import VqgenError

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(final: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it to `final`, replacing it. A folder
    being replaced is first moved into the temporary workspace, so a kill leaves it whole there."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = work / final.name
    if is_dir:
        target.mkdir()
    try:
        yield target
        if is_dir and final.exists():
            os.replace(final, work / "replaced")
        os.replace(target, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder, known by the metadata file its command writes into it."""

    what: str  # for messages: "a code-grid folder (vqgen dump-codes)"
    mark: str  # the file (or folder) that says vqgen wrote it
    key: str | None = None  # for a generic file name: a JSON key only ours carry

    def marks(self, folder: Path) -> bool:
        path = folder / self.mark
        if self.key is None:
            return path.exists()
        try:
            return self.key in json.loads(path.read_text())
        except (OSError, ValueError, TypeError):
            return False


OUTPUT_KINDS: dict[str, OutputKind] = {
    "run": OutputKind("a training run (train-tokenizer, train-prior, train-classifier)", "run_config.json"),
    "codes": OutputKind("a code-grid folder (dump-codes)", "vqgen_codes.json"),
    "samples": OutputKind("a sample folder (sample)", "sample_config.json"),
    "completions": OutputKind("a completion folder (complete)", "complete_config.json"),
    "reconstruct": OutputKind("a reconstruct folder", "metrics.json", key="tokenizer_sha256"),
    "pipeline": OutputKind("a pipeline run", "stages"),
    "bundle": OutputKind("a generator bundle (export)", "bundle.json"),
}


TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # `atomic_path`'s mkdtemp names


def claim_output(path: str | Path, kind: str) -> OutputLock:
    """Lock the output folder `path` for this process and check that a command of `kind` may write
    it: a missing path, an empty folder or a folder of that kind (its metadata file inside). Anything
    else is refused in one line, before any work. The lock is released by `with`, else at exit.
    Under `accelerate launch` the main process holds the lock and the others wait for its verdict."""
    path, state = Path(path), process_state()
    lock, error = OutputLock(path), None
    if state.is_main_process:
        try:
            lock.acquire()
            _check_own(path, OUTPUT_KINDS[kind])
        except VqgenError as err:
            lock.release()
            error = str(err)
    if state.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise VqgenError(error)
    return lock


def _check_own(path: Path, kind: OutputKind) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise VqgenError(f"{path}: is a file, not a folder; vqgen writes only into a new or empty folder or "
                         f"{kind.what}: choose another --out")
    # A run killed before its first file was renamed into place leaves only a temporary beside it.
    names = sorted(p.name for p in path.iterdir() if not TEMPORARY.match(p.name))
    if not names or kind.marks(path):
        return
    found = [name for name, other in OUTPUT_KINDS.items() if other.marks(path)]
    holds = OUTPUT_KINDS[found[0]].what if found else f"files vqgen did not write ({', '.join(names[:3])})"
    raise VqgenError(f"{path}: holds {holds}; vqgen writes only into a new or empty folder or {kind.what}, "
                     "and never deletes what is there: choose another --out")


class OutputLock:
    """`.NAME.lock` beside an output, naming the pid of the process that writes it.

    The lock itself is a flock on that file, which the kernel drops when its process dies however
    it dies: a file left by a killed run is stale, and the next writer takes it over (and says so).
    A process may claim an output it already holds (a pipeline stage inside the pipeline's run).
    """

    _held: dict[Path, list[int]] = {}  # lock file -> [file descriptor, claims], in this process

    def __init__(self, output: Path):
        output = Path(os.path.abspath(output))
        self.output, self.path = output, output.parent / f".{output.name}.lock"

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.path in self._held:
            self._held[self.path][1] += 1
            return
        fd = self._open_locked()
        previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if previous:
            logger.warning("%s: took over the lock of process %s, which is no longer running", self.path, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[self.path] = [fd, 1]

    def release(self) -> None:
        held = self._held.get(self.path)
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                _unlock(self.path, self._held.pop(self.path)[0])

    def _open_locked(self) -> int:
        """Open and flock the lock file; again when its holder removed it between our open and flock."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise VqgenError(f"{self.output}: another vqgen process (pid {holder}) is writing it; wait for "
                                     f"it to finish or choose another --out (lock file: {self.path})") from None
                if _is_current(self.path, fd):
                    return fd
                os.close(fd)
        except OSError as err:
            raise VqgenError(f"{self.output}: cannot write there ({err.filename}: {err.strerror}); "
                             "choose another --out") from None


def _is_current(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _unlock(path: Path, fd: int) -> None:
    if _is_current(path, fd):
        path.unlink()  # before the unlock: a waiter then finds no file rather than ours
    os.close(fd)


@atexit.register
def _release_all_locks() -> None:
    while OutputLock._held:
        path, (fd, _) = OutputLock._held.popitem()
        _unlock(path, fd)


# A full disk, a quota or a file-size limit: the run itself is fine, the medium is not.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What is intact after a disk-full error in a folder written whole by `atomic_path`.
REPLACED_WHOLE = "the folder is as it was before this run (nothing half-written); free some space and run it again"


@contextmanager
def disk_full_is_user_error(path: str | Path, intact: str) -> Iterator[None]:
    """Turn a write that failed for lack of space (under any library's wrapping) into one line
    naming `path` and saying what is `intact`."""
    try:
        yield
    except Exception as err:
        code = disk_full_errno(err)
        if code is None:
            raise
        raise VqgenError(f"{path}: could not write ({os.strerror(code)}); {intact}") from None


def disk_full_errno(err: BaseException | None) -> int | None:
    """The disk-full errno anywhere in an exception chain; pyarrow and safetensors put it only in the message."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:  # a chain may loop back on itself
        seen.add(id(err))
        code = _errno(err)
        if code in DISK_FULL:
            return code
        err = err.__cause__ or err.__context__
    return None


def _errno(err: BaseException) -> int | None:
    if isinstance(err, OSError):
        found = re.search(r"errno (\d+)", str(err), re.IGNORECASE)
        return err.errno or (int(found.group(1)) if found else None)
    if isinstance(err, SafetensorError):  # its Rust writer's io::Error, as text: "... (os error 28)"
        found = re.search(r"\(os error (\d+)\)", str(err))
        return int(found.group(1)) if found else None
    return None


class MetricsLog:
    """Append-only `metrics.jsonl`. On resume, lines past the resumed step are dropped so a
    resumed run leaves the same file as an uninterrupted one.

    A run killed while appending leaves its last line cut short: that line is dropped with a
    warning. A bad line anywhere else was not written by a kill, and is refused."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line, record in self._lines() if record.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [record for _, record in self._lines()] if self.path.exists() else []

    def _lines(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) for every complete line."""
        lines = [(n, line) for n, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1)
                 if line.strip()]
        parsed = []
        for number, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                parsed.append((line, record))
            elif number == lines[-1][0]:
                logger.warning("%s: dropped its last line, cut short when the run was stopped: %.60s", self.path, line)
            else:
                raise VqgenError(f"{self.path}: line {number} is not a JSON record ({line[:40]!r}); the file was "
                                 "damaged or edited: fix or delete that line")
        return parsed


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
