import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import VqgenError
from sampling.decode import sample
from sampling.generate import SampleConfig
from stage1_vqvae.model import VQVAE

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_generator import GRID, K, N, save_prior, save_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tokenizer = save_tokenizer(root / "tokenizer")
    return save_prior(root / "prior", tokenizer), tokenizer


def png_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "images").glob("*.png"))


@pytest.mark.parametrize("arch", ["gpt", "pixelcnn", "maskgit"])
def test_sample_writes_pngs_grid_and_codes(tmp_path, pair, arch):
    prior = pair[0] if arch == "gpt" else save_prior(tmp_path / arch, pair[1], arch=arch)
    out = sample(prior, pair[1], SampleConfig(per_class=2, classes=[2, 0], batch_size=3, seed=1), tmp_path / "s")
    assert png_names(out) == ["000000_c2.png", "000001_c2.png", "000002_c0.png", "000003_c0.png"]
    assert (out / "grid.png").is_file()
    with np.load(out / "codes.npz") as codes:
        assert codes["codes"].shape == (4, GRID, GRID) and codes["codes"].max() < K
        assert codes["labels"].tolist() == [2, 2, 0, 0] and codes["indices"].tolist() == [0, 1, 2, 3]


def test_unconditional_prior_names_and_resume(tmp_path, pair):
    prior = save_prior(tmp_path / "uncond", pair[1], num_classes=0)
    cfg = SampleConfig(n=5, batch_size=2, seed=3)
    out = sample(prior, pair[1], cfg, tmp_path / "s")
    assert png_names(out) == [f"{i:06d}_cu.png" for i in range(5)]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "images").iterdir()}
    codes_before = np.load(out / "codes.npz")["codes"]
    for name in ("000001_cu.png", "000004_cu.png"):
        (out / "images" / name).unlink()
    sample(prior, pair[1], dataclasses.replace(cfg, batch_size=4), out)  # batch size may change on resume
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "images").iterdir()}
    remade = {name for name in after if after[name][1] != before.get(name, (None, None))[1]}
    assert remade == {"000001_cu.png", "000004_cu.png"}
    assert all(after[name][0] == before[name][0] for name in before)  # same images again
    assert np.array_equal(np.load(out / "codes.npz")["codes"], codes_before)


def test_resume_with_other_settings_is_refused(tmp_path, pair):
    sample(pair[0], pair[1], SampleConfig(n=2, seed=0), tmp_path / "s")
    with pytest.raises(VqgenError, match="seed"):
        sample(pair[0], pair[1], SampleConfig(n=2, seed=1), tmp_path / "s")


@pytest.mark.parametrize("change", [{"cfg_schedule": "linear"}, {"cfg_interval": [0.0, 0.5]}])
def test_resume_with_another_guidance_schedule_is_refused(tmp_path, pair, change):
    cfg = SampleConfig(n=2, cfg_scale=2.0)
    sample(pair[0], pair[1], cfg, tmp_path / "s")
    with pytest.raises(VqgenError, match=f"other settings \\({next(iter(change))}\\)"):
        sample(pair[0], pair[1], dataclasses.replace(cfg, **change), tmp_path / "s")


def test_a_folder_sampled_before_guidance_schedules_resumes(tmp_path, pair):
    """Folders written before cfg_schedule and cfg_interval existed lack them: their null defaults
    are the guidance those folders were sampled with, so the same command continues them."""
    cfg = SampleConfig(n=3, cfg_scale=2.0)
    out = sample(pair[0], pair[1], cfg, tmp_path / "s")
    settings = json.loads((out / "sample_config.json").read_text())
    del settings["cfg_schedule"], settings["cfg_interval"]
    (out / "sample_config.json").write_text(json.dumps(settings))
    (out / "images" / "000002_c2.png").unlink()
    sample(pair[0], pair[1], cfg, out)
    assert png_names(out) == ["000000_c0.png", "000001_c1.png", "000002_c2.png"]


def test_mismatched_tokenizer_hash_is_refused(tmp_path, pair):
    other = save_tokenizer(tmp_path / "other")
    torch.manual_seed(5)
    VQVAE(VQVAE.config_class.from_pretrained(other)).save_pretrained(other)  # same spec, other weights
    with pytest.raises(VqgenError, match="tokenizer_sha256"):
        sample(pair[0], other, SampleConfig(n=1), tmp_path / "s")


def test_mismatched_codebook_is_refused(tmp_path, pair):
    other = save_tokenizer(tmp_path / "other", codebook_size=32)
    with pytest.raises(VqgenError, match="K=16"):
        sample(pair[0], other, SampleConfig(n=1), tmp_path / "s")


def test_mismatched_grid_is_refused(tmp_path, pair):
    other = save_tokenizer(tmp_path / "other", image_size=16)  # same K, an 8x8 grid instead of 4x4
    with pytest.raises(VqgenError, match="4x4 grid"):
        sample(pair[0], other, SampleConfig(n=1), tmp_path / "s")


def test_a_two_level_tokenizer_is_refused_for_a_one_level_prior(tmp_path, pair):
    save_tokenizer(tmp_path / "two", levels=2, top_k=K)  # a 2x2 top grid over the 4x4 bottom one
    with pytest.raises(VqgenError) as err:
        sample(pair[0], tmp_path / "two", SampleConfig(n=1), tmp_path / "s")
    assert str(err.value) == (
        f"{pair[0] / 'vqgen_prior.json'}: the prior draws one grid (4x4, K=16) but the tokenizer {tmp_path / 'two'} "
        "has 2 levels (top 2x2 (K=16), bottom 4x4 (K=16)); pass the tokenizer the prior was trained with")
    assert not (tmp_path / "s").exists()


def test_per_class_rerun_ignores_n(tmp_path, pair):
    sample(pair[0], pair[1], SampleConfig(per_class=1, n=5), tmp_path / "s")
    out = sample(pair[0], pair[1], SampleConfig(per_class=1, n=64), tmp_path / "s")  # n plays no part
    assert png_names(out) == ["000000_c0.png", "000001_c1.png", "000002_c2.png"]


@pytest.mark.parametrize(
    "cfg,num_classes,match",
    [(SampleConfig(classes=[N]), N, "out of range"), (SampleConfig(cfg_scale=3.0), 0, "unconditional"),
     (SampleConfig(classes=[1]), 0, "unconditional")],
)
def test_bad_requests_are_refused(tmp_path, pair, cfg, num_classes, match):
    prior = pair[0] if num_classes == N else save_prior(tmp_path / "uncond", pair[1], num_classes=0)
    with pytest.raises(VqgenError, match=match):
        sample(prior, pair[1], cfg, tmp_path / "s")
    assert not (tmp_path / "s" / "images").exists()


@pytest.mark.parametrize(
    "arch,cfg,match",
    [("gpt", SampleConfig(steps=8), "sample.steps set MaskGIT's parallel decoding, but this prior is autoregressive"),
     ("pixelcnn", SampleConfig(choice_temperature=1.0), "sample.choice_temperature set MaskGIT's"),
     ("maskgit", SampleConfig(kv_cache="static"), "sample.kv_cache is for autoregressive GPT priors"),
     ("maskgit", SampleConfig(steps=GRID * GRID + 1), "sample.steps=17: the prior's 4x4 grid has T=16 codes"),
     ("maskgit", SampleConfig(steps=0), "sample.steps=0: a MaskGIT prior needs at least 1 decoding step")],
)
def test_settings_of_another_kind_of_prior_are_one_line_before_any_write(tmp_path, pair, arch, cfg, match):
    prior = save_prior(tmp_path / arch, pair[1], arch=arch)
    with pytest.raises(VqgenError, match=match) as err:
        sample(prior, pair[1], cfg, tmp_path / "s")
    assert "\n" not in str(err.value) and not (tmp_path / "s").exists()


def test_maskgit_samples_are_resumable_at_another_batch_size(tmp_path, pair):
    prior = save_prior(tmp_path / "maskgit", pair[1], arch="maskgit")
    cfg = SampleConfig(n=5, batch_size=2, seed=3, steps=4, cfg_scale=2.0)
    whole = sample(prior, pair[1], cfg, tmp_path / "whole")
    part = sample(prior, pair[1], dataclasses.replace(cfg, n=5), tmp_path / "part")
    for name in ("000001_c1.png", "000004_c1.png"):
        (part / "images" / name).unlink()
    sample(prior, pair[1], dataclasses.replace(cfg, batch_size=5), part)
    with np.load(whole / "codes.npz") as a, np.load(part / "codes.npz") as b:
        assert np.array_equal(a["codes"], b["codes"])
    assert [(whole / "images" / n).read_bytes() for n in png_names(whole)] == [
        (part / "images" / n).read_bytes() for n in png_names(part)]


SCRIPT = """
import sys
from pathlib import Path
from accelerate import PartialState
from sampling.decode import sample
from sampling.generate import SampleConfig
prior, tokenizer, out = sys.argv[1:4]
sample(prior, tokenizer, SampleConfig(n=7, batch_size=3, seed=4, cfg_scale=2.0), out)
state = PartialState()
Path(out, f"process_{state.process_index}_of_{state.num_processes}").touch()
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_cover_every_index_once(tmp_path, pair, cpu_launch):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [*cpu_launch(2), str(script), str(pair[0]), str(pair[1]), str(tmp_path / "two")]
    subprocess.run(cmd, env=env, check=True, timeout=240, cwd=ROOT, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "two").glob("process_*")) == ["process_0_of_2", "process_1_of_2"]
    shards = [np.load(p)["indices"].tolist() for p in sorted((tmp_path / "two" / "shards").glob("*.npz"))]
    assert shards == [[0, 1, 2], [3], [4, 5, 6]]  # process 0 has 0..3, process 1 has 4..6
    one = sample(pair[0], pair[1], SampleConfig(n=7, batch_size=7, seed=4, cfg_scale=2.0), tmp_path / "one")
    with np.load(one / "codes.npz") as a, np.load(tmp_path / "two" / "codes.npz") as b:
        assert np.array_equal(a["codes"], b["codes"]) and np.array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("per_class,count,expected,row", [
    (50, 100, [*range(10), *range(50, 60)], 10),   # a row of the first 10 of each class
    (2, 6, [0, 1, 2, 3, 4, 5], 2),
    (0, 250, list(range(100)), 10),
])
def test_grid_shows_every_class(per_class, count, expected, row):
    from sampling.decode import grid_layout

    assert grid_layout(SampleConfig(per_class=per_class), count) == (expected, row)


def test_a_bad_seed_is_refused_before_anything_is_written(tmp_path, pair):
    with pytest.raises(VqgenError, match="sample.seed"):
        sample(pair[0], pair[1], SampleConfig(n=2, seed=-1), tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sample_config.json to refuse the rerun
    assert png_names(sample(pair[0], pair[1], SampleConfig(n=2, seed=0), tmp_path / "s")) == ["000000_c0.png",
                                                                                               "000001_c1.png"]


def test_sample_writes_only_into_a_sample_folder(tmp_path, pair):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "NOTES").write_text("x")
    with pytest.raises(VqgenError, match=r"d: holds files vqgen did not write \(NOTES\)"):
        sample(pair[0], pair[1], SampleConfig(n=2), tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["NOTES"]


def test_a_second_sampler_into_the_same_folder_is_refused(tmp_path, pair):
    hold = ROOT / "tests" / "core" / "hold_output.py"  # holds an output's lock, as a writer does
    holder = subprocess.Popen([sys.executable, str(hold), str(tmp_path / "s"), "samples"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(VqgenError, match=rf"another vqgen process \(pid {holder.pid}\) is writing it"):
        sample(pair[0], pair[1], SampleConfig(n=2), tmp_path / "s")
    holder.communicate("")
    assert not (tmp_path / "s").exists()


def test_a_full_disk_is_one_line_and_a_rerun_continues(tmp_path, pair):
    out = tmp_path / "s"
    # Every write past 16 kB fails with EFBIG, as on a full disk: the batches' PNGs and code shards
    # fit, codes.npz (200 grids of 4x4 int64 codes, 26 kB) does not. Python ignores SIGXFSZ.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))"
    command = f"{limit}; from vqgen.cli import main; raise SystemExit(main())"
    done = subprocess.run([sys.executable, "-c", command, "sample", "--prior", str(pair[0]), "--tokenizer",
                           str(pair[1]), "--out", str(out), "--n", "200", "--batch-size", "50"],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors == [f"vqgen sample: error: {out}: could not write (File too large); the samples finished "
                      "before are kept whole: free some space and run the same command to continue"]
    made = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert len(made) == 200 and not (out / "codes.npz").exists()
    sample(pair[0], pair[1], SampleConfig(n=200, batch_size=50), out)  # space again: only the rest is done
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == made
    with np.load(out / "codes.npz") as codes:
        assert codes["codes"].shape == (200, GRID, GRID)


def test_steps_and_kv_cache_flags_are_one_line_for_the_wrong_prior(tmp_path, pair, capsys):
    from vqgen.cli import main

    maskgit = save_prior(tmp_path / "maskgit", pair[1], arch="maskgit")
    base = ["sample", "--tokenizer", str(pair[1]), "--n", "2", "--out", str(tmp_path / "s")]
    for prior, flags, fragment in ((pair[0], ["--steps", "4"], "sample.steps set MaskGIT's parallel decoding"),
                                   (maskgit, ["--kv-cache", "static"], "sample.kv_cache is for autoregressive"),
                                   (maskgit, ["--steps", "17"], "sample.steps=17: the prior's 4x4 grid has T=16")):
        assert main([*base, "--prior", str(prior), *flags]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("vqgen sample: error:")]
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    with pytest.raises(SystemExit) as stop:  # below 1: refused by the flag itself, before anything loads
        main([*base, "--prior", str(maskgit), "--steps", "0"])
    assert stop.value.code == 2 and "argument --steps: must be >= 1, got 0" in capsys.readouterr().err
    assert main([*base, "--prior", str(maskgit), "--steps", "3"]) == 0
    assert json.loads((tmp_path / "s" / "sample_config.json").read_text())["steps"] == 3


def test_guidance_schedule_flags_reach_the_sample_settings(tmp_path, pair, capsys):
    from vqgen.cli import main

    base = ["sample", "--prior", str(pair[0]), "--tokenizer", str(pair[1]), "--n", "2", "--cfg-scale", "2"]
    assert main([*base, "--out", str(tmp_path / "s"), "--cfg-schedule", "cosine", "--cfg-interval", "0,0.5"]) == 0
    settings = json.loads((tmp_path / "s" / "sample_config.json").read_text())
    assert (settings["cfg_schedule"], settings["cfg_interval"]) == ("cosine", [0.0, 0.5])
    assert main([*base, "--out", str(tmp_path / "t"), "--cfg-interval", "0.5,0.5"]) == 2
    err = capsys.readouterr().err
    assert "vqgen sample: error: sample.cfg_interval=[0.5, 0.5]: need [start, end)" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    shown = capsys.readouterr().out
    assert "--cfg_schedule=STR (default null; or --cfg-schedule)" in shown and "--cfg-interval)" in shown
