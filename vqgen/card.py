"""The model card (README.md) of a bundle written by `vqgen export`: Hub metadata and the text.

The YAML front matter is huggingface_hub's `ModelCardData`: library, tags, data set, pipeline tag and
a `model-index` whose every metric carries its protocol (N of samples and of reference images, the
reference split, the network) in `args`, because an FID without its protocol means nothing (Parmar
et al. 2022). The numbers come from the pipeline run's metrics.json; a run exported before its
evaluation finished gets a card that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from core.data import DataConfig
from core.markdown import table
from eval.report import protocol_lines, with_floor
from sampling.decode import FREE_SETTINGS
from stage1_vqvae.model import VQVAEConfig
from stage2_prior.load import PriorMeta
from stage2_prior.registry import prior_kind

# Data specs with a Hub copy: (dataset id, pretty name), for the card's `datasets` and model-index.
HUB_DATASETS = {"fashion-mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
                "mnist": ("ylecun/mnist", "MNIST"), "cifar10": ("uoft-cs/cifar10", "CIFAR-10")}
# Sample scores of metrics.json's fid record: (key, metric type, label).
INCEPTION_METRICS = [("fid", "fid", "FID"), ("sfid", "sfid", "sFID"), ("kid_mean", "kid", "KID"),
                     ("precision", "precision", "precision"), ("recall", "recall", "recall")]
DIGITS = ".4g"  # significant digits of a value in the YAML metadata
ARCH_NAMES = {"gpt": "GPT", "pixelcnn": "PixelCNN", "maskgit": "MaskGIT"}
# What sample_config.json holds besides how the samples were drawn.
NOT_SAMPLING = (*FREE_SETTINGS, "prior_sha256", "tokenizer_sha256")


@dataclass(frozen=True)
class CardFacts:
    """What the card says about one bundle."""

    name: str  # the bundle's folder name: the card's title and the model-index name
    prior: PriorMeta
    tokenizer: VQVAEConfig
    data: DataConfig  # what the tokenizer was trained on
    parameters: dict[str, int]  # "tokenizer" / "prior" -> number of weights
    plain_transformers: bool  # the prior is a stock transformers causal LM
    metrics: dict[str, Any]  # the run's metrics.json ({} before its evaluation)
    sampling: dict[str, Any]  # the run's samples/sample_config.json: how the scored samples were drawn
    grid: str | None  # the sample grid's file name in the bundle


def model_card(facts: CardFacts) -> str:
    """README.md: the metadata as YAML front matter, then the text."""
    data = ModelCardData(library_name="vqgen", tags=_tags(facts), datasets=_dataset(facts.data)[:1] or None,
                         pipeline_tag="unconditional-image-generation" if facts.prior.num_classes == 0 else None,
                         model_name=facts.name, eval_results=eval_results(facts) or None)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(facts)}"))


def _tags(facts: CardFacts) -> list[str]:
    conditioning = "class-conditional" if facts.prior.num_classes else "unconditional"
    return ["vqgen", "image-generation", "vq-vae", f"{facts.prior.arch}-prior", conditioning]


def _dataset(data: DataConfig) -> list[str]:
    """[Hub dataset id, pretty name] of the training data, [] for data without a Hub copy."""
    kind, _, arg = data.spec.partition(":")
    if kind in HUB_DATASETS:
        return list(HUB_DATASETS[kind])
    if kind == "hf" and arg and not Path(arg).exists():  # a Hub name, not a saved local folder
        return [arg, arg]
    return []


def eval_results(facts: CardFacts) -> list[EvalResult]:
    """Every measured metric of the run, with its protocol: samples, tokenizer, prior."""
    stages = facts.metrics.get("stages", {})
    hub, pretty = _dataset(facts.data) or ["imagefolder", facts.data.spec]
    conditional = facts.prior.num_classes > 0
    task = ("class-conditional-image-generation", "Class-conditional image generation") if conditional else \
           ("unconditional-image-generation", "Unconditional image generation")

    def result(split: str, kind: str, value: Any, label: str, args: dict[str, Any]) -> EvalResult:
        return EvalResult(task_type=task[0], task_name=task[1], dataset_type=hub, dataset_name=pretty,
                          dataset_split=split, metric_type=kind, metric_value=float(format(value, DIGITS)), metric_name=label,
                          metric_args=args)

    rows = [*_inception(stages.get("fid", {})), *_classifier(stages.get("classifier", {})),
            *_tokenizer(stages.get("reconstruct", {})), *_prior(stages.get("prior", {}))]
    return [result(*row) for row in rows if isinstance(row[2], float)]


def _inception(fid: dict[str, Any]) -> list[tuple]:
    ref = fid.get("reference_meta") or {}
    split, n_ref = ref.get("split"), ref.get("n")
    args = {"n_samples": fid.get("n_samples"), "n_reference": n_ref, "reference_split": split,
            "network": fid.get("network")}
    return [(split, kind, fid.get(key), f"{label} (Inception, {fid.get('n_samples')} samples vs {n_ref} {split} images)",
             args) for key, kind, label in INCEPTION_METRICS]


def _classifier(clf: dict[str, Any]) -> list[tuple]:
    split, n, n_ref = clf.get("classifier_reference_split"), clf.get("classifier_n_samples"), clf.get("classifier_n_reference")
    args = {"n_samples": n, "n_reference": n_ref, "reference_split": split, "classifier_sha256": clf.get("classifier_sha256")}
    return [(split, "classifier-fid", value, f"{key} ({n} samples vs {n_ref} {split} images)", args)
            for key, value in clf.items() if key.startswith("classifier FID")]


def _tokenizer(recon: dict[str, Any]) -> list[tuple]:
    n = recon.get("rfid_n")
    return [("val", "rfid", recon.get("rfid"), f"rFID (Inception, {n} val images vs their reconstructions)",
             {"n_images": n}),
            ("val", "psnr", recon.get("psnr"), "reconstruction PSNR (dB)", {"n_images": recon.get("n_images")})]


def _prior(prior: dict[str, Any]) -> list[tuple]:
    if not prior:
        return []
    rows = prior_kind(prior.get("arch", "gpt")).objective.report_rows
    return [("val", key.removeprefix("val/").replace("_", "-"), prior.get(key), f"prior {label}", None)
            for key, label in rows]


def _body(facts: CardFacts) -> str:
    return "\n".join([*_intro(facts), *_use(facts), *_evaluation(facts), *_files(facts)])


def _intro(facts: CardFacts) -> list[str]:
    tok, meta = facts.tokenizer, facts.prior
    pretty = (_dataset(facts.data) or [None, f"`{facts.data.spec}`"])[1]
    classes = f"{meta.num_classes} classes (class-conditional, with classifier-free guidance)" if meta.num_classes \
        else "no classes (unconditional)"
    return [f"# {facts.name}", "", *([f"![samples]({facts.grid})", ""] if facts.grid else []),
            f"A two-stage image generator trained with [vqgen](https://pypi.org/project/vqgen/) on {pretty}: a VQ-VAE "
            f"tokenizer ({facts.parameters['tokenizer']:,} weights) turns {tok.image_size}x{tok.image_size} images with "
            f"{tok.in_channels} channel(s) into {meta.grid_h}x{meta.grid_w} grids of K = {meta.codebook_size} codes, "
            f"and a {ARCH_NAMES.get(meta.arch, meta.arch)} prior ({facts.parameters['prior']:,} weights) draws such grids, with {classes}.", ""]


def _use(facts: CardFacts) -> list[str]:
    meta = facts.prior
    lines = ["## Use it with vqgen", "", "```bash", "pip install vqgen",
             f"vqgen sample --run {facts.name} --out samples --n 16        # this folder",
             "vqgen sample --run OWNER/NAME --out samples --n 16     # the same bundle on the Hub", "```", "",
             "`--run` checks every file against the sha256 in `bundle.json` before loading it; `vqgen serve --run` "
             "and `vqgen complete --run` take the bundle the same way.", ""]
    if not facts.plain_transformers:
        return lines + [f"The {meta.arch} prior is a vqgen model: load it with vqgen "
                        f"(`stage2_prior.load.load_prior(\"{facts.name}/prior\")`).", ""]
    t, k, n = meta.grid_h * meta.grid_w, meta.codebook_size, meta.num_classes
    return lines + [
        "## Load the prior with plain transformers", "",
        "The prior is a stock causal language model over code tokens: ids 0 to K-1 are codes, K + c is class c, "
        f"K + N means no class (here K = {k}, N = {n}). A grid is its first token (the class) followed by its "
        f"{t} codes in raster order.", "",
        "```python", "import torch", "from transformers import AutoModelForCausalLM", "",
        f'prior = AutoModelForCausalLM.from_pretrained("{facts.name}/prior")  # or ("OWNER/NAME", subfolder="prior")',
        f"start = torch.tensor([[{k} + 0]])  # class 0" if n else f"start = torch.tensor([[{k}]])  # no class",
        f"codes = prior.generate(start, max_new_tokens={t}, do_sample=True)[:, 1:].reshape(-1, {meta.grid_h}, "
        f"{meta.grid_w})", "```", "",
        "Decoding codes into pixels needs vqgen's tokenizer: "
        f"`stage1_vqvae.load.load_tokenizer(\"{facts.name}/tokenizer\").decode_codes(codes)` gives images in [-1, 1].",
        ""]


def _evaluation(facts: CardFacts) -> list[str]:
    stages = facts.metrics.get("stages", {})
    if not stages.get("fid"):
        return ["## Evaluation", "", "Not measured: the run was exported before its evaluation stages finished.", ""]
    fid = stages["fid"]
    # Local paths of the machine that ran the evaluation mean nothing to a reader of the card.
    shown = {**fid, "samples": "samples/images of the exported run",
             "weights_path": Path(str(fid.get("weights_path"))).name}
    drawn = ", ".join(f"{k} = {v}" for k, v in facts.sampling.items() if v is not None and k not in NOT_SAMPLING)
    data = facts.data
    lines = ["## Evaluation", "",
             f"Measured by `vqgen pipeline` on data `{data.spec}` at {data.image_size} px. The val split is the "
             f"deterministic {data.val_fraction:.0%} of the train split vqgen holds out (data.val_fraction = "
             f"{data.val_fraction}, data.split_seed = {data.split_seed}).", "",
             *([f"The scored samples were drawn with {drawn}.", ""] if drawn else []),
             "### Samples, Inception network", "",
             *table([(label, with_floor(fid, key, ".4g")) for key, _, label in INCEPTION_METRICS]),
             *protocol_lines(shown), ""]
    clf = stages.get("classifier", {})
    if clf:
        lines += ["### Samples, small-data classifier (not comparable with Inception numbers)", "",
                  *table([(k, v) for k, v in clf.items() if k.startswith("classifier ")]
                         + [("samples (N)", clf.get("classifier_n_samples")),
                            ("reference images (N)", clf.get("classifier_n_reference")),
                            ("reference split", clf.get("classifier_reference_split"))])]
    recon, prior = stages.get("reconstruct", {}), stages.get("prior", {})
    lines += ["### Tokenizer (val split)", "",
              *table([("rFID (Inception)", recon.get("rfid")), ("rFID images", recon.get("rfid_n")),
                      ("PSNR (dB)", recon.get("psnr")), ("SSIM", recon.get("ssim")),
                      ("codebook usage %", recon.get("usage"))]),
              "### Prior (val split)", "",
              *table([(label, prior.get(key)) for key, label in prior_kind(prior.get("arch", "gpt")).objective.report_rows])]
    return lines


def _files(facts: CardFacts) -> list[str]:
    return ["## Files", "",
            *table([("`tokenizer/`", "the VQ-VAE: config.json, model.safetensors, vqgen_tokenizer.json (its training data)"),
                    ("`prior/`", f"the {facts.prior.arch} prior: config.json, model.safetensors, vqgen_prior.json "
                                 "(its code grids and the tokenizer's sha256)"),
                    ("`bundle.json`", "vqgen and format versions, the sha256 of every model file, what the models are"),
                    *([(f"`{facts.grid}`", "samples of the run")] if facts.grid else [])],
                   header=("path", "what")),
            f"Upload the folder as it is: `hf upload OWNER/NAME {facts.name}` (or `huggingface-cli upload OWNER/NAME "
            f"{facts.name}`).", ""]
