"""The per-user cache of Inception statistics of data set images: reference statistics, and those of
the real-data floor, computed once per data set, split, N, image format and network.

    $VQGEN_CACHE/inception-stats/<hash of the key>/{stats.npz, stats.json, key.json}

`$VQGEN_CACHE` defaults to ~/.cache/vqgen. `stats.npz` and its sidecar `stats.json` are
eval/reference.py's format; `key.json` holds the key (eval/data_stats.py's `stats_key`), compared in
full on every read. An entry is written whole in a temporary folder beside it and renamed into place
(a POSIX rename is atomic), so a reader sees a whole entry or none: when two runs fill one entry at
once, the first rename wins and the second run drops its own copy. An entry that no longer reads
back is moved out of the way and computed again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.errors import VqgenError
from core.runs import read_json, write_json
from eval.reference import RefStats, load_ref, save_ref

logger = logging.getLogger(__name__)

CACHE_ENV = "VQGEN_CACHE"
STATS_FILE, KEY_FILE = "stats.npz", "key.json"
KEY_VERSION = 1  # raised when what an entry holds changes, so that old entries are never read as new


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vqgen")


class StatsCache:
    """Inception statistics by key (a JSON-able dict). The folder is made and checked when the cache
    is opened, before any work: one that cannot be written is refused in one line."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.folder = self.root / "inception-stats"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VqgenError(f"{self.folder}: the statistics cache cannot be made there ({err.strerror or err}); "
                             f"point {CACHE_ENV} at a writable folder, or pass --no-cache") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise VqgenError(f"{self.folder}: the statistics cache is not writable; point {CACHE_ENV} at a "
                             "writable folder, or pass --no-cache")

    def entry(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:32]

    def load(self, key: dict[str, Any]) -> RefStats | None:
        """The statistics stored under `key`, or None (not there, or no longer readable)."""
        entry = self.entry(key)
        if not entry.is_dir():
            return None
        try:
            if read_json(entry / KEY_FILE, "cache key") != key:
                raise VqgenError(f"{entry / KEY_FILE}: holds another key")
            stats = load_ref(entry / STATS_FILE)
        except VqgenError as err:
            logger.warning("%s: unreadable cache entry (%s); computing the statistics again", entry, err)
            self._discard(entry)
            return None
        logger.info("Inception statistics from the cache: %s", entry)
        return stats

    def store(self, key: dict[str, Any], stats: RefStats) -> None:
        """Write `stats` under `key`, whole or not at all. A failure (a full disk) is a warning: the
        scores are computed, only the next run will compute them again."""
        entry = self.entry(key)
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=self.folder))
        except OSError as err:
            logger.warning("%s: statistics not cached (%s)", self.folder, err.strerror or err)
            return
        try:
            save_ref(work / STATS_FILE, stats)
            write_json(work / KEY_FILE, key)
            os.rename(work, entry)
            logger.info("Inception statistics cached: %s", entry)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                logger.warning("%s: statistics not cached (%s)", entry, err.strerror or err)
            # else another run stored this entry first: its copy is as good as ours
        except VqgenError as err:
            logger.warning("%s: statistics not cached (%s)", entry, err)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _discard(self, entry: Path) -> None:
        """Move a bad entry out of the way, then delete it (a reader never sees it half deleted)."""
        trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".bad", dir=self.folder))
        try:
            os.rename(entry, trash / entry.name)
        except OSError:
            pass  # gone already, or replaced by another run's good copy
        shutil.rmtree(trash, ignore_errors=True)
