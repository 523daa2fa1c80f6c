"""Vector quantization: nearest-code lookup with straight-through gradients, EMA or learned codebook.

Written here rather than taken from vector-quantize-pytorch or taming-transformers because we need,
together, what neither gives: a codebook that stays bit-identical on every DDP rank (EMA statistics
all-reduced; k-means init and dead-code restarts decided once on rank 0 and broadcast), every piece
of state in registered buffers (exact resume, and DDP's `broadcast_buffers` only ever copies equal
values), restarts driven by a per-code idle counter, and a lean CPU lookup (`kmeans.nearest_code`).

References: VQ-VAE (van den Oord et al. 2017, eq. 3; EMA updates in appendix A.1), Laplace-smoothed
EMA as in Sonnet's `VectorQuantizerEMA` and rosinality/vq-vae-2-pytorch, k-means init and dead-code
restarts as in Jukebox (Dhariwal et al. 2020, §3.2) and vector-quantize-pytorch, and the
l2-normalised low-dimensional lookup of ViT-VQGAN (Yu et al. 2022, §3.2) and LlamaGen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from core.config import setting
from stage1_vqvae.quantizers.base import Quantized, Quantizer, QuantizerConfig, straight_through
from stage1_vqvae.quantizers.distributed import broadcast_, gather_rows, sum_over_ranks
from stage1_vqvae.quantizers.kmeans import kmeans, nearest_code

logger = logging.getLogger(__name__)


@dataclass
class VQConfig(QuantizerConfig):
    kind: ClassVar[str] = "vq"
    size_key: ClassVar[str] = "codebook_size"  # the setting that decides K

    codebook_size: int = setting(512, "K, the number of codes", ge=2)
    beta: float = setting(0.25, "commitment weight on the encoder term (VQ-VAE eq. 3)", ge=0)
    ema: bool = setting(True, "EMA codebook (VQ-VAE appendix A.1); false: learned with a codebook loss")
    decay: float = setting(0.99, "EMA decay of the codebook", ge=0, lt=1)
    eps: float = setting(1e-5, "Laplace smoothing of the EMA cluster sizes", gt=0)
    kmeans_init: bool = setting(True, "codebook from k-means on the first training batch")
    kmeans_iters: int = setting(10, "k-means iterations", ge=1)
    restart_after_steps: int = setting(20, "replace codes idle this many training steps; 0: never", ge=0)
    lookup_dim: int = setting(0, "0: look up in D dims; else an l2-normalised lookup in this many (ViT-VQGAN)", ge=0)


class VectorQuantizer(Quantizer):
    """z (B, D, h, w) -> the nearest of K codebook vectors; losses "commitment" (beta included)
    and, for a learned codebook, "codebook". In training mode every forward also updates the
    codebook (EMA statistics, k-means init, dead-code restarts)."""

    def __init__(self, config: VQConfig, dim: int):
        super().__init__(config.codebook_size, config.usage_window)
        self.config = config
        k, d = config.codebook_size, config.lookup_dim or dim
        self.cosine = config.lookup_dim > 0
        # ViT-VQGAN §3.2: look codes up in a small l2-normalised space; project back to D after.
        self.project_in = nn.Linear(dim, d) if self.cosine else nn.Identity()
        self.project_out = nn.Linear(d, dim) if self.cosine else nn.Identity()
        embed = torch.empty(k, d)
        nn.init.kaiming_uniform_(embed)
        if self.cosine:
            embed = F.normalize(embed, dim=1)
        if config.ema:
            self.register_buffer("embed", embed)
            # Each code starts as if it had one vector assigned at its own position, so the
            # smoothed mean of a code that is never hit stays put instead of blowing up.
            self.register_buffer("cluster_size", torch.ones(k))
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("initialised", torch.tensor(not config.kmeans_init))
        self.register_buffer("idle_steps", torch.zeros(k, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    @property
    def codebook(self) -> Tensor:
        """(K, d) codes in lookup space (d = lookup_dim or D), l2-normalised when lookup_dim > 0."""
        return F.normalize(self.embed, dim=1) if self.cosine and not self.config.ema else self.embed

    def quantize(self, z: Tensor) -> Quantized:
        b, _, h, w = z.shape
        z_l = self.to_lookup_space(rearrange(z, "b d h w -> (b h w) d"))
        if self.training:
            self._prepare_codebook_(z_l.detach())
        codebook = self.codebook
        indices = nearest_code(z_l.detach(), codebook.detach(), self.cosine)
        e = codebook[indices]
        # beta weighs the ENCODER term beta*||z - sg(e)||^2 (VQ-VAE eq. 3). taming-transformers'
        # VectorQuantizer2 (taming/modules/vqvae/quantize.py) still defaults to legacy=True, which
        # puts beta on the codebook term instead; tests/stage1_vqvae/test_quantize.py pins ours.
        losses = {"commitment": self.config.beta * F.mse_loss(z_l, e.detach())}
        if not self.config.ema:
            losses["codebook"] = F.mse_loss(z_l.detach(), e)
        z_q = rearrange(self.project_out(straight_through(z_l, e)), "(b h w) d -> b d h w", b=b, h=h, w=w)
        counts = torch.bincount(indices, minlength=self.codebook_size)
        global_counts = self._update_codebook_(z_l.detach(), indices, counts) if self.training else None
        return Quantized(z_q, rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w), losses, counts, global_counts)

    def lookup(self, indices: Tensor) -> Tensor:
        return rearrange(self.project_out(self.codebook[indices]), "b h w d -> b d h w")

    def to_lookup_space(self, z: Tensor) -> Tensor:
        """z (N, D) -> (N, d) float32 vectors compared with the codebook (d = lookup_dim or D)."""
        z = self.project_in(z).float()
        return F.normalize(z, dim=1) if self.cosine else z

    @torch.no_grad()
    def _prepare_codebook_(self, z: Tensor) -> None:
        """Before looking codes up: k-means init on the first batch, then dead-code restarts.

        Done before the lookup (not after) so a learned codebook is never edited in place while
        a graph that saved it is still waiting for backward.
        """
        cfg = self.config
        generator = torch.Generator(device=z.device).manual_seed(int(self.step))
        if not self.initialised:
            self._kmeans_init_(gather_rows(z), generator)
        if cfg.restart_after_steps > 0:
            dead = self.idle_steps >= cfg.restart_after_steps  # identical on every rank
            if dead.any():
                self._restart_(dead, gather_rows(z), generator)

    def _kmeans_init_(self, z: Tensor, generator: torch.Generator) -> None:
        cfg = self.config
        if z.shape[0] < cfg.codebook_size:
            logger.warning(
                "k-means init got %d vectors for %d codes; some codes start as duplicates and will"
                " be restarted (use a larger batch to avoid this)", z.shape[0], cfg.codebook_size
            )
        centroids, counts = kmeans(z, cfg.codebook_size, cfg.kmeans_iters, self.cosine, generator)
        broadcast_(centroids)
        broadcast_(counts)
        self.embed.data.copy_(centroids)
        if cfg.ema:
            # Seed the EMA with the k-means statistics, as if this batch had already been seen.
            self.cluster_size.copy_(counts.clamp(min=1))
            self.embed_sum.copy_(centroids * self.cluster_size.unsqueeze(1))
        self.initialised.fill_(True)

    def _restart_(self, dead: Tensor, z: Tensor, generator: torch.Generator) -> None:
        """Replace dead codes by random current encoder outputs (Jukebox §3.2), chosen on rank 0."""
        which = dead.nonzero().squeeze(1)
        fresh = broadcast_(_sample_rows(z, which.numel(), generator).contiguous())
        self.embed.data[which] = fresh
        if self.config.ema:
            self.cluster_size[which] = 1.0
            self.embed_sum[which] = fresh
        self.idle_steps[which] = 0
        self.restarts += which.numel()
        logger.debug("restarted %d dead codes at step %d", which.numel(), int(self.step))

    @torch.no_grad()
    def _update_codebook_(self, z: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
        """After the lookup: the EMA step and the idle counters; returns the counts over all ranks."""
        global_counts = self._update_ema_(z, indices, counts) if self.config.ema else sum_over_ranks(counts)
        self.idle_steps.add_(1).masked_fill_(global_counts > 0, 0)
        return global_counts

    def _update_ema_(self, z: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
        """EMA of cluster sizes and sums over all ranks (one all-reduce); returns global counts."""
        cfg = self.config
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, z)
        stats = sum_over_ranks(torch.cat([counts.to(sums.dtype).unsqueeze(1), sums], dim=1))
        global_counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.lerp_(global_counts, 1 - cfg.decay)
        self.embed_sum.lerp_(sums, 1 - cfg.decay)
        # Laplace smoothing keeps every cluster size positive, so no code divides by zero.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + cfg.eps) / (n + cfg.codebook_size * cfg.eps) * n
        embed = self.embed_sum / smoothed.unsqueeze(1)
        self.embed.copy_(F.normalize(embed, dim=1) if self.cosine else embed)
        return global_counts


def _sample_rows(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n rows of x (N, d), without replacement when N >= n."""
    if x.shape[0] >= n:
        pick = torch.randperm(x.shape[0], generator=generator, device=x.device)[:n]
    else:
        pick = torch.randint(x.shape[0], (n,), generator=generator, device=x.device)
    return x[pick]
