import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import VqgenError
from sampling.complete import BLANK, complete_images, keep_rows
from sampling.completion_folder import read_image
from sampling.generate import Given, GridSpec, SampleConfig, generate
from sampling.samplers import sampler_for
from stage1_vqvae.load import load_tokenizer
from stage2_prior.load import load_prior

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_generator import GRID, K, save_prior, save_tokenizer, tiny_run  # noqa: E402

ARCHS = ("gpt", "pixelcnn", "maskgit")


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """Each arch's tiny prior (loaded) and the tokenizer (8x8 grey images, 4x4 grids of K=16 codes)."""
    root = tmp_path_factory.mktemp("gen")
    tokenizer = save_tokenizer(root / "tokenizer")
    priors = {arch: load_prior(save_prior(root / arch, tokenizer, arch=arch)) for arch in ARCHS}
    return priors, load_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(7)
    return torch.rand(2, 1, 8, 8) * 2 - 1


def codes_of(tokenizer, images):
    return tokenizer.encode(images)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_completion_keeps_the_kept_codes_and_repeats(generators, images, arch):
    priors, tokenizer = generators
    keep = keep_rows(GRID, GRID, 2)
    cfg = SampleConfig(n=3, temperature=0.0, cfg_scale=2.0, batch_size=2)
    first = complete_images(priors[arch], tokenizer, images, keep, cfg, labels=torch.tensor([0, 2]))
    again = complete_images(priors[arch], tokenizer, images, keep, cfg, labels=torch.tensor([0, 2]))
    assert first.codes.shape == (2, 3, GRID, GRID) and first.completions.shape == (2, 3, 1, 8, 8)
    original = codes_of(tokenizer, images)
    assert torch.equal(first.codes[:, :, :2], original[:, None, :2].expand(-1, 3, -1, -1))
    assert torch.equal(first.codes, again.codes) and torch.equal(first.completions, again.completions)
    assert 0 <= int(first.codes.min()) and int(first.codes.max()) < K


def raster_prefix(p):
    keep = torch.zeros(GRID * GRID, dtype=torch.bool)
    keep[:p] = True
    return keep.reshape(GRID, GRID)


def grids(count, seed=0):
    return torch.randint(0, K, (count, GRID, GRID), generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 1, 2, -1, 0])


def draw_all(prior, cfg, given=None):
    spec = GridSpec(prior.meta.vocab, GRID, GRID)
    draw = sampler_for(prior.meta.arch).draw
    batches = generate(prior.model, draw, spec, LABELS, list(range(len(LABELS))), cfg, given)
    return torch.cat([b.codes for b in batches])


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("p", [1, 6, 15])
def test_gpt_prefilled_prefix_equals_recompute(generators, kv_cache, p):
    """The cache prefilled with the kept prefix in one pass draws what recomputing the whole
    sequence at every code (kv_cache none) draws; the prefix is kept (6: mid-row)."""
    cfg = SampleConfig(seed=4, temperature=1.3, top_k=6, top_p=0.9, cfg_scale=2.5, batch_size=2)
    given = Given(grids(len(LABELS)), raster_prefix(p))
    cached = draw_all(generators[0]["gpt"], dataclasses.replace(cfg, kv_cache=kv_cache), given)
    assert torch.equal(cached, draw_all(generators[0]["gpt"], dataclasses.replace(cfg, kv_cache="none"), given))
    assert torch.equal(cached.flatten(1)[:, :p], given.codes.flatten(1)[:, :p])


@pytest.mark.parametrize("arch", ARCHS)
def test_keeping_nothing_is_plain_sampling_and_everything_is_the_input(generators, arch):
    prior, cfg = generators[0][arch], SampleConfig(seed=5, cfg_scale=2.0, batch_size=3)
    codes = grids(len(LABELS))
    nothing = Given(codes, torch.zeros(GRID, GRID, dtype=torch.bool))
    assert torch.equal(draw_all(prior, cfg, nothing), draw_all(prior, cfg))
    assert torch.equal(draw_all(prior, cfg, Given(codes, torch.ones(GRID, GRID, dtype=torch.bool))), codes)


@pytest.mark.parametrize("arch", ARCHS)
def test_completions_do_not_depend_on_the_batch(generators, images, arch):
    priors, tokenizer = generators
    keep = keep_rows(GRID, GRID, 1)
    runs = [complete_images(priors[arch], tokenizer, images, keep, SampleConfig(n=3, seed=2, batch_size=b),
                            labels=torch.tensor([1, 1])).codes for b in (1, 3)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][:, 0], runs[0][:, 1])  # each completion has a stream of its own


def test_maskgit_completes_any_mask(generators, images):
    priors, tokenizer = generators
    keep = (torch.arange(GRID)[:, None] + torch.arange(GRID)) % 2 == 0  # a checkerboard
    done = complete_images(priors["maskgit"], tokenizer, images, keep, SampleConfig(n=2, seed=1, steps=8),
                           labels=torch.tensor([0, 1]))
    original = tokenizer.encode(images)
    assert torch.equal(done.codes[:, :, keep], original[:, None, keep].expand(-1, 2, -1))
    assert not torch.equal(done.codes[:, :, ~keep], original[:, None, ~keep].expand(-1, 2, -1))


@pytest.mark.parametrize("arch", ["gpt", "pixelcnn"])
def test_an_autoregressive_prior_refuses_a_mask_that_is_not_a_prefix(generators, images, arch):
    priors, tokenizer = generators
    keep = ~keep_rows(GRID, GRID, 2)  # the bottom rows
    with pytest.raises(VqgenError, match="completes only a prefix in raster order .* use a maskgit prior") as err:
        complete_images(priors[arch], tokenizer, images, keep, SampleConfig(n=1))
    assert "\n" not in str(err.value)


def test_kept_shows_the_kept_codes_pixels_and_blanks_the_rest(generators, images):
    priors, tokenizer = generators
    done = complete_images(priors["gpt"], tokenizer, images, keep_rows(GRID, GRID, 1), SampleConfig(n=1))
    factor = 8 // GRID  # pixels per code
    assert torch.equal(done.original, images) and torch.equal(done.kept[..., :factor, :], images[..., :factor, :])
    assert bool((done.kept[..., factor:, :] == BLANK).all())


@pytest.mark.parametrize("keep,match", [
    (torch.ones(GRID, GRID + 1, dtype=torch.bool), r"shape \(4, 5\), but the prior's code grid is 4x4"),
    (torch.ones(GRID, GRID), r"got torch.float32 .* give a bool mask"),
    (torch.ones(3, GRID, GRID, dtype=torch.bool), r"one per image \(2, h, w\)"),
])
def test_a_bad_keep_mask_is_one_line(generators, images, keep, match):
    priors, tokenizer = generators
    with pytest.raises(VqgenError, match=match):
        complete_images(priors["maskgit"], tokenizer, images, keep, SampleConfig(n=1))


def test_keep_rows_out_of_range_is_one_line():
    assert keep_rows(4, 3, 4).all() and not keep_rows(4, 3, 0).any()
    with pytest.raises(VqgenError, match="--keep-rows 5: the code grid has 4 rows; pass 0 to 4"):
        keep_rows(4, 3, 5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny generators (a GPT and a MaskGIT prior over one tokenizer) and two 8x8 grey PNGs."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = save_tokenizer(root / "tokenizer")
    priors = {arch: save_prior(root / arch, tokenizer, arch=arch) for arch in ("gpt", "maskgit")}
    pngs = []
    for i in range(2):
        pngs.append(root / f"image{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(pngs[-1])
    return priors, tokenizer, pngs


def run_complete(folders, out, *flags, arch="gpt"):
    from vqgen.cli import main

    priors, tokenizer, pngs = folders
    images = [arg for png in pngs for arg in ("--image", str(png))]
    return main(["complete", "--prior", str(priors[arch]), "--tokenizer", str(tokenizer), *images, "--out", str(out),
                 *flags])


def input_codes(folders):
    tokenizer = load_tokenizer(folders[1])
    pixels = torch.stack([read_image(png, tokenizer, pad=False) for png in folders[2]])
    return tokenizer.encode(pixels)


def test_complete_writes_completions_grid_codes_and_settings(tmp_path, folders):
    out = tmp_path / "c"
    assert run_complete(folders, out, "--keep-rows", "2", "--n", "3", "--temperature", "0", "--cfg-scale", "2",
                        "--classes", "1,2") == 0
    assert sorted(p.name for p in (out / "completions").iterdir()) == [f"{b:03d}_{j:03d}.png" for b in range(2)
                                                                        for j in range(3)]
    with np.load(out / "codes.npz") as saved:
        codes, keep, labels = (torch.from_numpy(saved[k]) for k in ("codes", "keep", "labels"))
    assert codes.shape == (2, 3, GRID, GRID) and labels.tolist() == [1, 2] and keep[:, :2].all() and not keep[:, 2:].any()
    assert torch.equal(codes[:, :, :2], input_codes(folders)[:, None, :2].expand(-1, 3, -1, -1))
    assert torch.equal(codes[:, 0], codes[:, 1])  # greedy: every completion of an image is the same
    with Image.open(out / "grid.png") as grid:  # 2 rows of original | kept | 3 completions, 8x8 with 2 px padding
        assert grid.size == (2 + 5 * 10, 2 + 2 * 10)
    settings = json.loads((out / "complete_config.json").read_text())
    assert settings["keep_rows"] == 2 and settings["images"] == [str(p) for p in folders[2]]
    made = {p.name: p.read_bytes() for p in (out / "completions").iterdir()}
    assert run_complete(folders, out, "--keep-rows", "2", "--n", "3", "--temperature", "0", "--cfg-scale", "2",
                        "--classes", "1,2") == 0  # the same again: the same files
    assert {p.name: p.read_bytes() for p in (out / "completions").iterdir()} == made


@pytest.mark.parametrize("size", [GRID, 8])  # a pixel per code, or the image's size
def test_keep_mask_file_for_maskgit(tmp_path, folders, size):
    keep = (torch.arange(GRID)[:, None] + torch.arange(GRID)) % 2 == 0  # a checkerboard of codes
    pixels = keep.repeat_interleave(size // GRID, 0).repeat_interleave(size // GRID, 1).numpy().astype(np.uint8) * 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    out = tmp_path / "c"
    assert run_complete(folders, out, "--keep-mask", str(tmp_path / "mask.png"), "--n", "2", arch="maskgit") == 0
    with np.load(out / "codes.npz") as saved:
        codes = torch.from_numpy(saved["codes"])
        assert torch.equal(torch.from_numpy(saved["keep"][0]), keep)
    assert torch.equal(codes[:, :, keep], input_codes(folders)[:, None, keep].expand(-1, 2, -1))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vqgen complete: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_one_line_before_any_write(tmp_path, folders, capsys):
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "mask.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "c"
    cases = [
        (["--keep-mask", str(tmp_path / "mask.png")], f"--keep-mask {tmp_path / 'mask.png'}: 5x5 pixels, but it must "
                                                      "be 4x4 (one pixel per code) or 8x8"),
        (["--keep-rows", "5"], "--keep-rows 5: the code grid has 4 rows; pass 0 to 4"),
        (["--keep-rows", "1", "--image", str(tmp_path / "broken.png")], f"--image {tmp_path / 'broken.png'}: cannot "
                                                                         "read it as an image"),
        (["--keep-rows", "1", "--image", str(tmp_path / "gone.png")], f"--image {tmp_path / 'gone.png'}: not found"),
        (["--keep-rows", "1", "--classes", "0,1,2"], "give one class for every image, or one per image (2 images)"),
    ]
    for flags, fragment in cases:
        assert run_complete(folders, out, *flags) == 2
        assert fragment in one_error_line(capsys)
    keep = ~keep_rows(GRID, GRID, 1).numpy()
    Image.fromarray(keep.astype(np.uint8) * 255).save(tmp_path / "bottom.png")
    assert run_complete(folders, out, "--keep-mask", str(tmp_path / "bottom.png")) == 2  # not a prefix, for a GPT
    assert "use a maskgit prior" in one_error_line(capsys)
    assert not out.exists()


def test_a_rerun_with_other_settings_is_refused(tmp_path, folders, capsys):
    assert run_complete(folders, tmp_path / "c", "--keep-rows", "1", "--n", "1") == 0
    assert run_complete(folders, tmp_path / "c", "--keep-rows", "2", "--n", "1") == 2
    assert "holds samples made with other settings (keep_rows)" in one_error_line(capsys)


def test_complete_takes_a_pipeline_run(tmp_path, folders, capsys):
    from vqgen.cli import main

    run = tiny_run(tmp_path / "run", arch="maskgit")
    image = ["--image", str(folders[2][0]), "--keep-rows", "1", "--n", "2"]
    assert main(["complete", "--run", str(run), *image, "--out", str(tmp_path / "c")]) == 0
    with np.load(tmp_path / "c" / "codes.npz") as saved:
        assert saved["codes"].shape == (1, 2, GRID, GRID)
    assert main(["complete", "--run", str(run), "--prior", str(folders[0]["gpt"]), *image,
                 "--out", str(tmp_path / "d")]) == 2
    assert "--run and --prior both name a generator" in one_error_line(capsys)
