"""`vqgen serve --run WHERE`: a web demo of a trained generator, a gradio app on localhost.

    vqgen serve --run runs/demo          # then open http://127.0.0.1:7860

Two tabs:
- Generate: a class (every class in turn, one class, or unconditional), the guidance scale and
  schedule, temperature, top-k/p, seed and count -> one grid of images. Image i is the image i that
  `vqgen sample` draws with the same settings: each sample draws from the stream of (seed, i).
- Complete: a test image of the run's data (or an upload); its top rows of codes are kept and the
  prior draws the rest (`sampling.complete`) -> the original, the kept part and the completions.

WHERE is what `vqgen.generator.locate_generator` accepts (a pipeline run, a bundle, a Hub id). The
prior and the tokenizer are loaded once, before the server starts, so a bad WHERE is one line and a
request only samples. The page draws a first grid as it opens. gradio is the optional extra
`pip install 'vqgen[serve]'`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from core.data import DataConfig, ImageDataset, load_images
from core.distributed import process_state
from core.errors import VqgenError
from core.pixels import to_uint8
from sampling.complete import complete_images, keep_rows
from sampling.completion_folder import pads, read_image
from sampling.decode import check_pair, grid_spec
from sampling.generate import UNCOND, SampleConfig, check_config, generate, plan_labels
from sampling.guidance import CFG_SCHEDULES
from sampling.samplers import sampler_for
from stage1_vqvae.load import TRAINING_FILE, load_tokenizer, tokenizer_folder, training_data
from stage1_vqvae.model import VQVAE
from stage2_prior.load import LoadedPrior, load_prior
from vqgen.generator import locate_generator

logger = logging.getLogger(__name__)

EVERY_CLASS = -2  # the class menu's "every class in turn" (sample.classes null); -1 is unconditional
OWN_CLASS = -3  # the completion tab's "the image's own class" (an upload has none: unconditional)
GRID_ROW = 8  # images per row of a grid
MAX_COUNT = 64  # images a request may ask for
# Class names of the data sets that have them, by class id (torchvision keeps CIFAR-10's in a data file).
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
# The app fetches nothing from the web: system fonts (gradio's default theme loads Google Fonts). The
# images are small (32x32 for the demo): each fills its box, scaled up without blur.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
CSS = ".pixels img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


@dataclass(frozen=True)
class LoadedGenerator:
    """What the app holds from start to end: the models (eval mode, on the device) and the run's data."""

    prior: LoadedPrior
    tokenizer: VQVAE
    where: str  # what the user named it by (--run), for the page
    source: str  # the prior's folder, for messages
    class_names: list[str]  # by class id; empty for an unconditional prior
    test_images: ImageDataset | None  # the run's test split, for the completion tab (None: uploads only)
    pad: bool  # uploads are padded to the tokenizer's size, as its data was (else cropped and resized)

    @property
    def num_classes(self) -> int:
        return self.prior.meta.num_classes


def load_generator(where: str | Path) -> LoadedGenerator:
    """The generator at `where` (a run, a bundle or a Hub id), checked and loaded once."""
    paths = locate_generator(where)
    prior, tokenizer = load_prior(paths.prior), load_tokenizer(paths.tokenizer)
    check_pair(prior, paths.prior, tokenizer)
    device = process_state().device
    prior.model.to(device)
    tokenizer.to(device)
    data = _training_data(paths.tokenizer)
    return LoadedGenerator(prior, tokenizer, paths.source, str(paths.prior), class_names(data, prior.meta.num_classes),
                     _test_split(data), pads(paths.tokenizer))


def _training_data(tokenizer: Path) -> DataConfig | None:
    """The data the tokenizer was trained on; None for a tokenizer without its training record."""
    return training_data(tokenizer) if (tokenizer_folder(tokenizer) / TRAINING_FILE).is_file() else None


def _test_split(data: DataConfig | None) -> ImageDataset | None:
    """The test split of the run's data; None (with a warning: uploads still work) when it cannot be read."""
    if data is None:
        return None
    try:
        return load_images(data, "test")
    except VqgenError as err:
        logger.warning("the completion tab takes uploads only: the run's test images cannot be read (%s)", err)
        return None


def class_names(data: DataConfig | None, num_classes: int) -> list[str]:
    """A name for each class id: the data set's own names where it has them, else the ids."""
    kind = data.spec.partition(":")[0] if data is not None else ""
    names = CLASS_NAMES.get(kind, ())
    return list(names) if len(names) == num_classes else [str(c) for c in range(num_classes)]


@torch.inference_mode()
def draw_images(gen: LoadedGenerator, cfg: SampleConfig) -> Tensor:
    """The images (n, C, H, W) in [-1, 1] that `vqgen sample` draws with `cfg`, through the prior's sampler."""
    spec, sampler = grid_spec(gen.prior), sampler_for(gen.prior.meta.arch)
    check_config(cfg, gen.num_classes, gen.source)
    sampler.check(cfg, spec, gen.source)
    labels = plan_labels(cfg, gen.num_classes)
    batches = generate(gen.prior.model, sampler.draw, spec, labels, list(range(len(labels))), cfg)
    return torch.cat([gen.tokenizer.decode_codes(batch.codes.to(gen.tokenizer.device)).cpu() for batch in batches])


def warm_up(gen: LoadedGenerator) -> LoadedGenerator:
    """Draw one image, so that the first request does not pay torch's and the prior's first-call costs."""
    draw_images(gen, SampleConfig(n=1))
    return gen


def grid_image(images: Tensor) -> Image.Image:
    """images (n, C, H, W) in [-1, 1] -> one PIL image, GRID_ROW a row, as `vqgen sample`'s grid.png pads them."""
    return to_pil_image(make_grid(to_uint8(images), nrow=min(len(images), GRID_ROW), padding=2, pad_value=255))


def sample_config(count: float, cfg_scale: float, schedule: str, temperature: float, top_k: float, top_p: float,
                  seed: float, classes: list[int] | None = None) -> SampleConfig:
    """The settings of one request, from the app's controls (gradio numbers may come as floats)."""
    if not 1 <= count <= MAX_COUNT:
        raise VqgenError(f"count {count}: ask for 1 to {MAX_COUNT} images")
    return SampleConfig(n=int(count), classes=classes, cfg_scale=float(cfg_scale), cfg_schedule=schedule,
                        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed),
                        batch_size=MAX_COUNT)


def pick_test_image(gen: LoadedGenerator, index: float) -> tuple[Tensor, int]:
    """Test image `index` of the run's data: (C, H, W) in [-1, 1] and its label."""
    if gen.test_images is None:
        raise VqgenError("this run's test images cannot be read (see the server's log); upload an image instead")
    if not 0 <= index < len(gen.test_images):
        raise VqgenError(f"test image {index}: the test split has images 0 to {len(gen.test_images) - 1}")
    item = gen.test_images[int(index)]
    return item["image"], int(item["label"])


def complete_image(gen: LoadedGenerator, image: Tensor, rows: float, cfg: SampleConfig,
                   label: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Complete image (C, H, W) from its top `rows` rows of codes: (original, kept part, completions grid)."""
    keep = keep_rows(gen.prior.meta.grid_h, gen.prior.meta.grid_w, int(rows))
    with torch.inference_mode():
        done = complete_images(gen.prior, gen.tokenizer, image[None], keep, cfg, torch.tensor([label]))
    return grid_image(done.original), grid_image(done.kept), grid_image(done.completions[0])


def _user_errors(gr: Any, handler: Callable) -> Callable:
    """`handler` with a VqgenError shown in the page as its one line (gr.Error), not as a traceback."""

    @functools.wraps(handler)
    def wrapped(*args):
        try:
            return handler(*args)
        except VqgenError as err:
            raise gr.Error(str(err)) from None

    return wrapped


def _class_menu(gr: Any, gen: LoadedGenerator, first: tuple[str, int]) -> Any:
    """The class menu: `first`, unconditional, then each class as 'id: name' (an unconditional prior: fixed)."""
    named = [(name if name == str(c) else f"{c}: {name}", c) for c, name in enumerate(gen.class_names)]
    choices = [first, ("unconditional", UNCOND), *named] if gen.num_classes else [("unconditional", UNCOND)]
    return gr.Dropdown(choices, value=choices[0][1], label="class", interactive=gen.num_classes > 0)


def _sampling_controls(gr: Any, gen: LoadedGenerator, count: int) -> list:
    """The controls both tabs share, in `sample_config`'s order."""
    conditional = gen.num_classes > 0
    return [
        gr.Slider(1, MAX_COUNT, value=count, step=1, label="count"),
        gr.Slider(0, 10, value=1.5 if conditional else 1.0, step=0.1, label="guidance scale (1: none)",
                  interactive=conditional),
        gr.Dropdown(list(CFG_SCHEDULES), value="constant", label="guidance schedule", interactive=conditional),
        gr.Slider(0, 2, value=1.0, step=0.05, label="temperature (0: greedy)"),
        gr.Slider(0, gen.prior.meta.codebook_size, value=0, step=1, label="top-k (0: off)"),
        gr.Slider(0.05, 1, value=1.0, step=0.05, label="top-p (1: off)"),
        gr.Number(0, precision=0, minimum=0, label="seed"),
    ]


def _generate_tab(gr: Any, gen: LoadedGenerator) -> tuple[Callable, list, Any]:
    """The generate tab; returns its handler, inputs and output, for the first grid drawn as the page opens."""
    with gr.Row():
        with gr.Column(scale=1):
            inputs = [_class_menu(gr, gen, ("every class in turn", EVERY_CLASS)), *_sampling_controls(gr, gen, 16)]
            run = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            grid = gr.Image(label="samples", type="pil", format="png", elem_id="samples", elem_classes="pixels",
                            height=560, interactive=False)

    def handler(class_id: float, *values) -> Image.Image:
        classes = None if int(class_id) == EVERY_CLASS else [int(class_id)]
        return grid_image(draw_images(gen, sample_config(*values, classes=classes)))

    handler = _user_errors(gr, handler)
    run.click(handler, inputs, grid, api_name="generate")
    return handler, inputs, grid


def _complete_tab(gr: Any, gen: LoadedGenerator) -> None:
    grid_h, tests = gen.prior.meta.grid_h, gen.test_images
    with gr.Row():
        with gr.Column(scale=1):
            index = gr.Slider(0, len(tests) - 1 if tests else 0, value=0, step=1, label="test image",
                              interactive=tests is not None)
            # A file, not gr.Image: gradio's image input would decode and re-save it through PIL first, so
            # core.data.images would not read the file itself (16-bit, alpha, EXIF), nor refuse it in one line.
            upload = gr.File(file_types=["image"], type="filepath", label="or upload an image")
            rows = gr.Slider(0, grid_h, value=grid_h // 2, step=1, label=f"rows of codes kept (of {grid_h})")
            own = ("the image's own class (an upload: unconditional)", OWN_CLASS)
            inputs = [index, upload, rows, _class_menu(gr, gen, own), *_sampling_controls(gr, gen, 8)]
            run = gr.Button("Complete", variant="primary")
        with gr.Column(scale=2):
            with gr.Row():
                shown = [gr.Image(label=name, type="pil", format="png", elem_classes="pixels", height=200,
                                  interactive=False) for name in ("original", "kept")]
            shown.append(gr.Image(label="completions", type="pil", format="png", elem_classes="pixels", height=360,
                                  interactive=False))

    def handler(index: float, upload: str | None, rows: float, class_id: float, *values):
        # An upload is read as `vqgen complete --image` reads one.
        image, label = (read_image(Path(upload), gen.tokenizer, gen.pad), UNCOND) if upload \
            else pick_test_image(gen, index)
        return complete_image(gen, image, rows, sample_config(*values),
                              label if int(class_id) == OWN_CLASS else int(class_id))

    run.click(_user_errors(gr, handler), inputs, shown, api_name="complete")


def describe(gen: LoadedGenerator) -> str:
    """One line on the generator, for the top of the page."""
    meta, size = gen.prior.meta, gen.tokenizer.config.image_size
    classes = f"{meta.num_classes} classes" if meta.num_classes else "unconditional"
    return (f"`{gen.where}`: a {meta.arch} prior ({classes}) drawing {meta.grid_h}x{meta.grid_w} grids of "
            f"{meta.codebook_size} codes, decoded to {size}x{size} images")


def build_app(gen: LoadedGenerator) -> Any:
    """The gradio Blocks of the demo (not started)."""
    gr = import_gradio()
    title = f"vqgen: {gen.source}"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## vqgen demo\n{describe(gen)}")
        with gr.Tab("Generate"):
            first_grid = _generate_tab(gr, gen)
        with gr.Tab("Complete"):
            _complete_tab(gr, gen)
        # A grid as the page opens, drawn with the controls' starting values (not an API endpoint of its own).
        app.load(*first_grid, api_visibility="private")
    return app


def require_gradio() -> None:
    """One line saying how to install gradio where it is missing (finding it is cheap, importing it is not)."""
    if importlib.util.find_spec("gradio") is None:
        raise VqgenError("vqgen serve needs gradio, an optional extra: pip install 'vqgen[serve]'")


def import_gradio() -> Any:
    require_gradio()
    return importlib.import_module("gradio")


def check_port(host: str, port: int) -> None:
    """Refuse an address the server could not listen on, before the models are loaded."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise VqgenError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); pass another "
                             "--port (or stop what uses it)") from None


def launch(app: Any, host: str, port: int, share: bool = False, block: bool = True) -> str:
    """Start the server; returns its local URL. block=False returns at once (tests, bench); True serves
    until Ctrl-C."""
    gr = import_gradio()
    theme = gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           ssr_mode=False, theme=theme, css=CSS, quiet=not block, footer_links=[])
    return url


def serve(where: str | Path, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> str:
    """`vqgen serve`: load the generator at `where` once, then serve the demo until Ctrl-C; returns its URL."""
    require_gradio()
    check_port(host, port)
    app = build_app(warm_up(load_generator(where)))
    launch(app, host, port, share)
    return f"http://{host}:{port}"
