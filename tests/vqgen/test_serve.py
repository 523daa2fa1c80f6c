"""`vqgen serve`: the web demo driven through gradio_client, once in headless chromium, and its
one-line refusals. One tiny server for the module (gradio's import alone takes seconds)."""

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import to_dict
from core.data import DataConfig
from core.errors import VqgenError
from core.runs import write_json
from sampling.complete import complete_images, keep_rows
from sampling.decode import sample
from sampling.generate import SampleConfig
from stage1_vqvae.load import load_tokenizer
from stage2_prior.load import load_prior
from vqgen.cli import main
from vqgen.serve import (
    EVERY_CLASS,
    OWN_CLASS,
    build_app,
    draw_images,
    grid_image,
    launch,
    load_generator,
    warm_up,
)

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for tiny_generator
from tiny_generator import GRID, tiny_run  # noqa: E402

gradio_client = pytest.importorskip("gradio_client", reason="the serve extra: pip install -e '.[dev,serve]'")

IMAGE = 8  # the tiny tokenizer's image side; 8 images of it a grid row, 2 pixels of padding
ROOT = Path(__file__).resolve().parents[2]


def grid_size(count: int) -> tuple[int, int]:
    """(width, height) of a grid of `count` tiny images, as `vqgen sample`'s grid.png lays them out."""
    per_row = min(count, 8)
    return per_row * (IMAGE + 2) + 2, -(-count // per_row) * (IMAGE + 2) + 2


def generate(client, class_id=EVERY_CLASS, count=5, cfg_scale=1.5, schedule="constant", temperature=1.0, top_k=0,
             top_p=1.0, seed=3) -> np.ndarray:
    path = client.predict(class_id, count, cfg_scale, schedule, temperature, top_k, top_p, seed, api_name="/generate")
    return np.asarray(Image.open(path).convert("RGB"))


def complete(client, index=0, upload=None, rows=2, class_id=OWN_CLASS, count=2, temperature=0.0, seed=0):
    paths = client.predict(index, upload, rows, class_id, count, 1.0, "constant", temperature, 0, 1.0, seed,
                           api_name="/complete")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, folder):
    """A tiny pipeline run whose data is the vqgen tests' two-class image folder (its test split: 8x8 grey)."""
    root = tiny_run(tmp_path_factory.mktemp("serve") / "run")
    data = DataConfig(spec=f"folder:{folder}", image_size=IMAGE, channels=1)
    write_json(root / "tokenizer" / "model" / "vqgen_tokenizer.json", {"data": to_dict(data)})
    return root


@pytest.fixture(scope="module")
def served(run):
    """(generator, url, client) of the demo of `run`, served in this process on a free port."""
    gen = warm_up(load_generator(run))
    app = build_app(gen)
    url = launch(app, "127.0.0.1", free_port(), block=False)
    yield gen, url, gradio_client.Client(url, verbose=False)
    app.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_draws_what_vqgen_sample_draws(served, run, tmp_path):
    gen, _, client = served
    grid = generate(client, count=5, seed=3)
    assert grid.shape == (grid_size(5)[1], grid_size(5)[0], 3)
    # Image i depends on (seed, i) only: the page's grid is `vqgen sample`'s images, laid out the same way.
    out = sample(run / "prior", run / "tokenizer", SampleConfig(n=5, cfg_scale=1.5, seed=3), tmp_path / "s")
    images = [np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))]
    expected = pixels(grid_image(torch.from_numpy(np.stack(images))[:, None].float() / 127.5 - 1))
    np.testing.assert_array_equal(grid, expected)
    assert np.array_equal(generate(client, count=5, seed=3), grid)  # same seed, same grid
    assert not np.array_equal(generate(client, count=5, seed=4), grid)
    assert generate(client, class_id=1, count=16, schedule="cosine").shape == (*grid_size(16)[::-1], 3)


def test_completion_at_temperature_0_keeps_the_kept_codes(served, run):
    gen, _, client = served
    image, label = gen.test_images[0]["image"], int(gen.test_images[0]["label"])
    original, kept, completions = complete(client, index=0, rows=GRID, count=2)  # every row kept
    tokenizer = load_tokenizer(run / "tokenizer")
    with torch.no_grad():
        reconstruction = tokenizer.decode_codes(tokenizer.encode(image[None]))
    np.testing.assert_array_equal(original, pixels(grid_image(image[None])))
    np.testing.assert_array_equal(kept, original)
    np.testing.assert_array_equal(completions, pixels(grid_image(reconstruction.repeat(2, 1, 1, 1))))
    # Two rows kept: the served completions are sampling.complete's for the image's own class, every time.
    served_twice = [complete(client, index=0, rows=2, count=2)[2] for _ in range(2)]
    done = complete_images(load_prior(run / "prior"), tokenizer, image[None], keep_rows(GRID, GRID, 2),
                           SampleConfig(n=2, temperature=0.0), torch.tensor([label]))
    assert (done.codes[0, :, :2] == tokenizer.encode(image[None])[0, :2]).all()
    for found in served_twice:
        np.testing.assert_array_equal(found, pixels(grid_image(done.completions[0])))


def test_completion_of_an_upload_and_its_refusal(served, tmp_path):
    _, _, client = served
    Image.fromarray(np.full((20, 12), 200, dtype=np.uint8)).save(tmp_path / "upload.png")
    original, kept, completions = complete(client, upload=gradio_client.handle_file(tmp_path / "upload.png"), rows=1,
                                           temperature=1.0)
    assert original.shape == kept.shape == (IMAGE, IMAGE, 3) and completions.shape == (*grid_size(2)[::-1], 3)
    assert (kept[:2] == original[:2]).all() and (kept[2:] == 128).all()  # the first row of codes kept, the rest blank
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError, match="notes.png: cannot read it as an image") as err:
        complete(client, upload=gradio_client.handle_file(tmp_path / "notes.png"))
    assert "\n" not in str(err.value)


def test_a_request_the_prior_cannot_honour_is_one_line(served):
    _, _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match="but cfg_scale is 1") as err:
        generate(client, cfg_scale=1.0, schedule="linear")
    assert "\n" not in str(err.value)
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):  # gradio's own check
        generate(client, class_id=7)


def test_an_unconditional_prior_refuses_guidance(tmp_path):
    gen = load_generator(tiny_run(tmp_path / "run", num_classes=0))
    assert gen.class_names == [] and draw_images(gen, SampleConfig(n=2)).shape == (2, 1, IMAGE, IMAGE)
    with pytest.raises(VqgenError, match="the prior is unconditional"):
        draw_images(gen, SampleConfig(n=2, cfg_scale=2.0))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no headless browser: apt-get install chromium (`make test` installs it)")
def test_the_page_shows_a_grid_in_a_real_browser(served, tmp_path):
    from bench.serve import GRID_IMAGE_JS, headless_page

    _, url, _ = served
    with headless_page(url, size=(1000, 800)) as page:
        # The page draws its first grid as it opens (16 images); the <img> must hold that picture.
        assert page.wait_for(GRID_IMAGE_JS, timeout=30) == list(grid_size(16))
        shot = Image.open(page.screenshot(tmp_path / "page.png"))
    assert shot.size == (1000, 800) and len(set(shot.convert("L").getdata())) > 10


def test_serve_refuses_a_missing_run_in_one_line(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vqgen serve: error: {tmp_path / 'nowhere'}: no such folder") and err.count("\n") == 1


def test_serve_refuses_a_busy_port_before_loading(run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--run", str(run), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen there" in err and err.count("\n") == 1
