"""The perceptual term of the tokenizer loss: LPIPS (Zhang et al. 2018) on VGG16, as in VQGAN.

torchmetrics' implementation (`torchmetrics.functional.image.lpips`): its linear heads (LPIPS v0.1)
ship inside torchmetrics, but its VGG16 backbone needs torchvision's ImageNet weights, which torchvision
would download, and these machines cannot. So the backbone is built empty and filled from
torchvision's file `vgg16-397923af.pth`, the first found of:

    1. tokenizer.loss.perceptual_weights   a path in the config
    2. $VQGEN_LPIPS_WEIGHTS                 a path in the environment
    3. <torch hub dir>/checkpoints/vgg16-397923af.pth, where torchvision caches it

The file is read with `torch.load(weights_only=True)` (or safetensors): nothing is unpickled.

The FID Inception network is never a training loss: a tokenizer trained against the judge lowers FID
without better images (Kynkäänniemi et al. 2023, "The Role of ImageNet Classes in Fréchet Inception
Distance"), so a configuration that names it is refused.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from einops import repeat
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchmetrics.functional.image.lpips import _NoTrainLpips

from core.errors import VqgenError
from core.inception_files import INCEPTION_FILES

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1, as torch.hub names it
ENV = "VQGEN_LPIPS_WEIGHTS"
NETWORKS = ("vgg",)
WEIGHTS_KEY, NETWORK_KEY, WEIGHT_KEY = ("tokenizer.loss.perceptual_weights", "tokenizer.loss.perceptual_network",
                                        "tokenizer.loss.perceptual_weight")
WHY_NOT_INCEPTION = ("the Inception network that scores FID is never a training loss: training against the "
                     "judge lowers FID without better images (Kynkäänniemi et al. 2023)")


def hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def check_network(network: str) -> None:
    """One line for a perceptual backbone other than VGG16, with the reason when it is Inception."""
    if "inception" in network.lower():
        raise VqgenError(f"{NETWORK_KEY}={network}: {WHY_NOT_INCEPTION}; use vgg (LPIPS)")
    if network not in NETWORKS:
        raise VqgenError(f"{NETWORK_KEY}={network} is unknown; use {' or '.join(NETWORKS)}")


def find_vgg16_weights(path: str = "") -> Path:
    """The VGG16 weights file: `path`, else $VQGEN_LPIPS_WEIGHTS, else the torch hub cache; one line
    saying where to put it when there is none."""
    given = path or os.environ.get(ENV, "")
    if given:
        found = Path(given).expanduser()
        key = WEIGHTS_KEY if path else ENV
        if any(found.match(pattern) for pattern in INCEPTION_FILES):
            raise VqgenError(f"{key}={found}: {WHY_NOT_INCEPTION}; give torchvision's {VGG16_FILE}")
        if not found.is_file():
            raise VqgenError(f"{key}={found}: no such file; give the path of torchvision's {VGG16_FILE}")
        return found
    if hub_path().is_file():
        return hub_path()
    raise VqgenError(
        f"{WEIGHT_KEY} > 0 needs LPIPS's ImageNet VGG16 weights, which cannot be downloaded here: copy "
        f"torchvision's {VGG16_FILE} to {hub_path()}, or set {WEIGHTS_KEY} or ${ENV} to its path "
        f"(or set {WEIGHT_KEY}=0)"
    )


def load_vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """The convolutions of torchvision's VGG16 (`features.<i>.weight|bias`) from a .pth or .safetensors file."""
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                 weights_only=True)
    except (OSError, RuntimeError, SafetensorError, ValueError, pickle.UnpicklingError) as err:
        raise VqgenError(f"{path}: not a readable weights file ({type(err).__name__}); give torchvision's "
                         f"{VGG16_FILE}") from None
    if not isinstance(state, dict):
        raise VqgenError(f"{path}: holds no state dict; give torchvision's {VGG16_FILE}")
    if any("Mixed_" in key or "Conv2d_1a" in key for key in state):
        raise VqgenError(f"{path}: {WHY_NOT_INCEPTION}; give torchvision's {VGG16_FILE}")
    return {key: value for key, value in state.items() if key.startswith("features.")}


class LPIPS(nn.Module):
    """images x, y (B, C, H, W) in [-1, 1], C = 1 or 3 -> perceptual distance (B,); frozen, always in eval mode.

    `vgg16`: torchvision's VGG16 state dict (`load_vgg16_features`); None leaves the backbone randomly
    initialised, which only tests want."""

    def __init__(self, vgg16: dict[str, torch.Tensor] | None):
        super().__init__()
        # pretrained: the LPIPS heads torchmetrics ships; pnet_rand: no download of the backbone.
        self.lpips = _NoTrainLpips(pretrained=True, net="vgg", pnet_rand=True)
        if vgg16 is not None:
            self._load_backbone(vgg16)

    def _load_backbone(self, vgg16: dict[str, torch.Tensor]) -> None:
        # torchmetrics keeps VGG16's `features` in five slices, each layer under its index in `features`:
        # slice2.5.weight is features.5.weight.
        live = self.lpips.net.state_dict()
        source = {key: f"features.{key.split('.', 1)[1]}" for key in live}
        wrong = sorted(src for key, src in source.items() if src not in vgg16 or vgg16[src].shape != live[key].shape)
        if wrong:
            raise VqgenError(f"the VGG16 weights lack or misshape {', '.join(wrong[:3])}; give torchvision's "
                             f"{VGG16_FILE}")
        self.lpips.net.load_state_dict({key: vgg16[src] for key, src in source.items()})

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images as the RGB images VGG16 was trained on
            x, y = (repeat(t, "b 1 h w -> b 3 h w") for t in (x, y))
        return self.lpips(x, y).flatten()


def build_perceptual(weights: str = "") -> LPIPS:
    """LPIPS with the ImageNet VGG16 found by `find_vgg16_weights`."""
    path = find_vgg16_weights(weights)
    return LPIPS(load_vgg16_features(path))
