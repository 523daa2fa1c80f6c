"""The real-data floor beside every score, and the statistics cache seen from `vqgen fid`, `fid-ref`
and the pipeline: Inception passes are counted from the log line each pass writes."""

import json
import logging
import shutil

import numpy as np
import pytest

from core.data import DataConfig
from eval.cache import StatsCache
from eval.fid import fid
from eval.floor import FLOOR_SPLIT
from vqgen.cli import main

SCORES = ("fid", "sfid", "kid_mean", "precision", "recall", "density", "coverage")


def inception_passes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Inception pass")]


def folder_data(root, pngs, n_train=6, n_test=6, size=16):
    pngs(root / "train", n_train, size, seed=1)
    pngs(root / "test", n_test, size, seed=2)
    return DataConfig(spec=f"folder:{root}", image_size=size)


@pytest.mark.slow
def test_the_floor_is_n_train_images_scored_like_the_samples_and_cached_like_the_reference(
        tmp_path, pngs, caplog, capsys):
    data = folder_data(tmp_path / "data", pngs)
    samples = pngs(tmp_path / "samples", 4, 16, seed=3)
    caplog.set_level(logging.INFO)
    # 1. The pipeline's call: the reference (6 test images), the samples, then the floor (4 train images).
    first = fid(samples, data, cache=StatsCache())
    assert inception_passes(caplog) == ["Inception pass: test split, 6 images", "Inception pass: samples, 4 images",
                                        "Inception pass: train split, 4 images"]
    floor = first["real_data"]
    assert floor["split"] == "train" and floor["n"] == 4 and all(np.isfinite(floor[k]) for k in SCORES)
    # 2. fid-ref of the same split, size and network: written from the cache, no Inception pass.
    caplog.clear()
    ref = tmp_path / "ref.npz"
    assert main(["fid-ref", "--data", data.spec, "--data.image_size=16", "--split", "test", "--out", str(ref)]) == 0
    assert inception_passes(caplog) == []
    # 3. `vqgen fid` against that file: its sidecar names the data, so the floor is there, cached too.
    caplog.clear()
    capsys.readouterr()
    assert main(["fid", "--samples", str(samples), "--ref", str(ref), "--out", str(tmp_path / "fid.json")]) == 0
    assert inception_passes(caplog) == ["Inception pass: samples, 4 images"]
    printed = capsys.readouterr().out
    assert f"fid: {first['fid']:.4f} (real data at N = 4: {floor['fid']:.4f})" in printed
    assert f"precision: {first['precision']:.4f} (real data at N = 4: {floor['precision']:.4f})" in printed
    report = json.loads((tmp_path / "fid.json").read_text())
    assert report["real_data"] == floor and report["fid"] == first["fid"]
    assert f"| fid | {first['fid']:.4f} (real data at N = 4: {floor['fid']:.4f}) |" in (tmp_path / "fid.md").read_text()
    # 4. The same 4 train images scored as samples score what the floor said.
    shutil.copytree(tmp_path / "data" / "train", tmp_path / "train4", ignore=lambda d, names: sorted(names)[4:])
    caplog.clear()
    direct = fid(tmp_path / "train4", data, cache=StatsCache())
    assert inception_passes(caplog) == ["Inception pass: samples, 4 images"]
    for key in SCORES:
        assert direct[key] == pytest.approx(floor[key], rel=1e-6, abs=1e-9), key
    # 5. --no-cache computes the reference again.
    caplog.clear()
    assert main(["fid-ref", "--data", data.spec, "--data.image_size=16", "--out", str(ref), "--no-cache"]) == 0
    assert inception_passes(caplog) == ["Inception pass: test split, 6 images"]


def test_the_cache_key_holds_the_pixels(tmp_path, pngs, random_pth, caplog):
    data = folder_data(tmp_path / "data", pngs, n_test=4)
    caplog.set_level(logging.INFO)
    run = lambda: main(["fid-ref", "--data", data.spec, "--data.image_size=16", "--out", str(tmp_path / "ref.npz"),  # noqa: E731
                        "--inception-weights", str(random_pth)])
    assert run() == 0 and run() == 0
    assert inception_passes(caplog) == ["Inception pass: test split, 4 images"]  # the second came from the cache
    pngs(tmp_path / "data" / "test", 4, 16, seed=9)  # the same file names, other pixels
    caplog.clear()
    assert run() == 0
    assert inception_passes(caplog) == ["Inception pass: test split, 4 images"]  # not served stale


def test_no_floor_where_train_has_too_few_images_or_the_data_is_unknown(tmp_path, pngs, random_pth):
    data = folder_data(tmp_path / "data", pngs, n_train=2, n_test=4)
    samples = pngs(tmp_path / "samples", 3, 16, seed=3)
    result = fid(samples, data, weights=random_pth)
    assert result["real_data"] == (f"real data: unavailable (data '{data.spec}' has 2 train images, fewer than "
                                   "the N = 3 samples)")
    np.savez(tmp_path / "pf.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # pytorch-fid --save-stats: no sidecar
    third_party = fid(samples, tmp_path / "pf.npz", weights=random_pth)
    assert third_party["real_data"] == (f"real data: unavailable ({tmp_path / 'pf.npz'} records no data settings; "
                                        "pass --ref SPEC, or a reference from `vqgen fid-ref`)")
    assert third_party["sfid"].startswith("sFID: unavailable") and "precision" not in third_party


def test_the_floor_split_is_another_split():
    assert all(FLOOR_SPLIT[split] != split for split in ("train", "val", "test"))


TOY = ["--data.max_images=256", "--tokenizer.preset=tiny", "--tokenizer.train.steps=4", "--tokenizer.train.batch_size=32",
       "--prior.train.steps=4", "--prior.train.batch_size=32", "--prior.train.warmup_steps=1", "--sample.per_class=0",
       "--sample.n=6", "--sample.batch_size=6", "--eval.inception_n=6", "--eval.ref_n=6", "--eval.rfid_n=6",
       "--eval.recon_n=4", "--eval.use_classifier=false"]


@pytest.mark.slow
def test_a_second_pipeline_run_computes_no_reference(tmp_path, caplog, fmnist_available):
    caplog.set_level(logging.INFO)
    passes = {}
    for run in ("first", "second"):  # two run folders, one machine (one $VQGEN_CACHE)
        caplog.clear()
        assert main(["pipeline", "--config", "configs/fashion-mnist.yaml", "--out", str(tmp_path / run), *TOY]) == 0
        passes[run] = inception_passes(caplog)
    assert passes["first"] == ["Inception pass: val split, 6 images", "Inception pass: rFID reconstructions, 6 images",
                               "Inception pass: test split, 6 images", "Inception pass: samples, 6 images",
                               "Inception pass: train split, 6 images"]
    assert passes["second"] == ["Inception pass: rFID reconstructions, 6 images", "Inception pass: samples, 6 images"]
    first, second = (json.loads((tmp_path / run / "metrics.json").read_text())["stages"] for run in passes)
    assert second["fid"]["real_data"] == first["fid"]["real_data"]  # the floor, the same numbers from the cache
