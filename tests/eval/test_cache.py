"""The statistics cache: entries read back whole or not at all, two writers at once, a bad cache
folder refused before any work, and runs that compute no reference the second time."""

import logging
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch

from core.errors import VqgenError
from eval.cache import KEY_FILE, STATS_FILE, StatsCache
from eval.scores import stats_of

KEY = {"version": 1, "data": {"spec": "folder:x", "image_size": 16}, "split": "test", "n": 20,
       "weights": {"kind": "fid-helper", "sha": "a16e"}, "pixels_sha256": "00"}


def stats(seed=0, n=20):
    g = torch.Generator().manual_seed(seed)
    return stats_of(torch.randn(n, 2048, generator=g), {"n": n, "split": "test", "writer": seed},
                    torch.randn(n, 2023, generator=g))


def assert_same(a, b):
    for key in ("mu", "sigma", "features", "mu_s", "sigma_s"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.meta == b.meta


def test_an_entry_reads_back_whole_and_only_under_its_key(tmp_path):
    cache = StatsCache(tmp_path)
    assert cache.load(KEY) is None
    cache.store(KEY, stats())
    assert_same(cache.load(KEY), stats())
    assert cache.load({**KEY, "n": 21}) is None and cache.load({**KEY, "pixels_sha256": "01"}) is None
    assert [p.name for p in cache.folder.iterdir()] == [cache.entry(KEY).name]  # no temporary copy left
    assert sorted(p.name for p in cache.entry(KEY).iterdir()) == [KEY_FILE, "stats.json", STATS_FILE]


def test_a_damaged_entry_is_dropped_and_filled_again(tmp_path, caplog):
    cache = StatsCache(tmp_path)
    cache.store(KEY, stats())
    npz = cache.entry(KEY) / STATS_FILE
    npz.write_bytes(npz.read_bytes()[:1000])  # a disk that lost the end of the file
    with caplog.at_level(logging.WARNING):
        assert cache.load(KEY) is None
    assert "unreadable cache entry" in caplog.text and not cache.entry(KEY).exists()
    cache.store(KEY, stats(1))
    assert_same(cache.load(KEY), stats(1))


def _store_all(root, entry_stats, keys, go):
    cache = StatsCache(root)
    go.wait()
    for i in range(keys):
        cache.store({"n": i}, entry_stats)


def test_two_processes_filling_the_same_entries_at_once_leave_each_whole(tmp_path):
    # Forked, so each writer starts at once with its statistics made; both wait for `go`, then store
    # the same keys at the same moment.
    fork = multiprocessing.get_context("fork")
    go, keys = fork.Event(), 4
    writers = [fork.Process(target=_store_all, args=(tmp_path, stats(seed), keys, go)) for seed in (0, 1)]
    for proc in writers:
        proc.start()
    go.set()
    for proc in writers:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in writers] == [0, 0]
    cache = StatsCache(tmp_path)
    for i in range(keys):
        back = cache.load({"n": i})
        assert_same(back, stats(back.meta["writer"]))  # one writer's arrays with that writer's sidecar
    assert len(list(cache.folder.iterdir())) == keys  # and no temporary folder left behind


def test_a_cache_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path / "file"))
    with pytest.raises(VqgenError, match=r"file/inception-stats: the statistics cache cannot be made there "
                                         r"\(Not a directory\); point VQGEN_CACHE at a writable folder, or pass --no-cache"):
        StatsCache()
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path / "cache"))
    assert StatsCache().folder == tmp_path / "cache" / "inception-stats"


def test_a_failed_write_is_a_warning(tmp_path, caplog):
    cache = StatsCache(tmp_path)
    cache.folder.rmdir()
    cache.folder.write_text("")  # the folder became a file since the cache was opened
    with caplog.at_level(logging.WARNING):
        cache.store(KEY, stats())  # the scores are computed; only the cache misses them
    assert "inception-stats: statistics not cached (Not a directory)" in caplog.text


def test_time_is_not_spent_when_the_entry_exists(tmp_path):
    cache = StatsCache(tmp_path)
    cache.store(KEY, stats())
    before = os.stat(cache.entry(KEY) / STATS_FILE).st_mtime_ns
    time.sleep(0.01)
    cache.store(KEY, stats(1))  # another run's copy: the first one stays
    assert os.stat(cache.entry(KEY) / STATS_FILE).st_mtime_ns == before
    assert_same(cache.load(KEY), stats())
