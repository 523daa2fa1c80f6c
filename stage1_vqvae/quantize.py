"""Vector quantizer: nearest-code lookup with straight-through gradients, EMA or learned codebook.

Written here rather than taken from vector-quantize-pytorch or taming-transformers because it is
the heart of the tokenizer and we need, together, what neither gives: a codebook that stays
bit-identical on every DDP rank (EMA statistics all-reduced; k-means init and dead-code restarts
decided once on rank 0 and broadcast), every piece of state in registered buffers (exact resume,
and DDP's `broadcast_buffers` only ever copies equal values), restarts driven by a per-code idle
counter, and a lean CPU path (one fused `addmm` per block of rows, no (N, K) one-hot matrices).

References: VQ-VAE (van den Oord et al. 2017, eq. 3; EMA updates in appendix A.1), Laplace-smoothed
EMA as in Sonnet's `VectorQuantizerEMA` and rosinality/vq-vae-2-pytorch, k-means init and dead-code
restarts as in Jukebox (Dhariwal et al. 2020, §3.2) and vector-quantize-pytorch, and the
l2-normalised low-dimensional lookup of ViT-VQGAN (Yu et al. 2022, §3.2) and LlamaGen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqgen.config import check, setting

logger = logging.getLogger(__name__)

# Rows per distance block: a (4096, K) float block stays small enough to live in cache and is
# reused across blocks instead of materialising the whole (N, K) matrix.
_BLOCK_ROWS = 4096


@dataclass
class QuantizerConfig:
    codebook_size: int = setting(512, "K, the number of codes", ge=2)
    dim: int = setting(64, "D, the encoder's output channels", ge=1)
    beta: float = setting(0.25, "commitment weight on the encoder term (VQ-VAE eq. 3)", ge=0)
    ema: bool = setting(True, "EMA codebook (VQ-VAE appendix A.1); False: learned with a codebook loss")
    decay: float = setting(0.99, "EMA decay of the codebook", ge=0, lt=1)
    eps: float = setting(1e-5, "Laplace smoothing of the EMA cluster sizes", gt=0)
    kmeans_init: bool = setting(True, "codebook from k-means on the first training batch")
    kmeans_iters: int = setting(10, "k-means iterations", ge=1)
    restart_after_steps: int = setting(100, "replace codes idle this many training steps; 0 disables", ge=0)
    lookup_dim: int = setting(0, "0: look up in D dims; else project to this many dims, l2-normalised", ge=0)
    usage_window: int = setting(100, "training `usage` = share of codes used in the last this-many steps", ge=1)

    def __post_init__(self) -> None:
        check(self, source="quantizer config")


class QuantizerOutput(NamedTuple):
    z_q: Tensor  # (B, D, h, w) quantized vectors; straight-through gradients to z when training
    indices: Tensor  # (B, h, w) int64 code ids in [0, K)
    losses: dict[str, Tensor]  # "commitment" (beta included); "codebook" in learned mode
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code histogram on this process
    usage: Tensor  # scalar in [0, 1]: training, codes used in the last usage_window steps (all
    #                ranks); eval, codes used on this process since `reset_usage()`


class KMeansResult(NamedTuple):
    centroids: Tensor  # (K, d)
    counts: Tensor  # (K,) vectors assigned to each centroid in the last iteration


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(x: Tensor) -> Tensor:
    """(n_r, d) on each rank -> (sum n_r, d) on every rank; ranks may hold different row counts."""
    if not _distributed():
        return x
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    padded = x.new_zeros(longest, x.shape[1])
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes)])


def _broadcast_(t: Tensor) -> Tensor:
    """Rank 0's values everywhere: decisions made once cannot drift apart between ranks."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _sample_rows(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n rows of x (N, d), without replacement when N >= n."""
    if x.shape[0] >= n:
        pick = torch.randperm(x.shape[0], generator=generator, device=x.device)[:n]
    else:
        pick = torch.randint(x.shape[0], (n,), generator=generator, device=x.device)
    return x[pick]


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, cosine: bool = False) -> Tensor:
    """Index of the nearest code for each row: z (N, d), codebook (K, d) -> (N,) int64.

    argmin ||z - e||^2 = argmax (z.e - ||e||^2 / 2): ||z||^2 is constant per row and skipped, so
    each block is one fused addmm. For l2-normalised vectors it is argmax z.e.
    """
    bias = torch.zeros_like(codebook[:, 0]) if cosine else codebook.square().sum(1).mul_(-0.5)
    codebook_t = codebook.t()
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    rows = min(_BLOCK_ROWS, z.shape[0])
    scores, best = z.new_empty(rows, codebook.shape[0]), z.new_empty(rows)
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        n = block.shape[0]
        torch.addmm(bias, block, codebook_t, out=scores[:n])
        # max(dim) is about twice as fast as argmax(dim) on CPU (torch 2.x) for the same indices.
        torch.max(scores[:n], dim=1, out=(best[:n], out[start : start + n]))
    return out


def code_perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of a code histogram counts (K,), in the float dtype of counts (float32 for
    integers): K when all K codes are used equally, 1 when one code is."""
    probs = counts / counts.sum()
    return torch.special.xlogy(probs, probs).sum().neg().exp()  # xlogy: an unused code adds 0, not NaN


def _kmeanspp_seeds(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k rows of x (N, d) by k-means++ (Arthur & Vassilvitskii 2007): each next seed is drawn with
    probability proportional to its squared distance from the seeds so far, so that Lloyd's
    iterations do not start with two seeds in one cluster and leave another cluster uncovered.

    For large k the seeds are drawn k // 64 at a time (as k-means|| oversamples per round), so
    there are at most ~64 sequential rounds instead of k.
    """
    per_round = max(1, k // 64)
    x_sq = x.square().sum(1)
    new = x[torch.randint(x.shape[0], (1,), generator=generator, device=x.device)]
    seeds, closest = [new], torch.full_like(x_sq, float("inf"))
    for drawn in range(1, k + 1, per_round):
        # squared distances to the newest seeds only: ||x||^2 - 2 x.s + ||s||^2
        dist = torch.addmm(new.square().sum(1), x, new.t(), alpha=-2).add_(x_sq.unsqueeze(1))
        torch.minimum(closest, dist.clamp_(min=0).min(1).values, out=closest)
        want = min(per_round, k - drawn)
        if want <= 0:
            break
        weights = closest if bool((closest > 0).sum() >= want) else torch.ones_like(closest)
        new = x[torch.multinomial(weights, want, generator=generator)]
        seeds.append(new)
    return torch.cat(seeds)


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int, cosine: bool, generator: torch.Generator) -> KMeansResult:
    """Lloyd's k-means on x (N, d) from k-means++ seeds; empty clusters keep their centroid."""
    centroids = _kmeanspp_seeds(x, k, generator)
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        assign = nearest_code(x, centroids, cosine)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        if cosine:
            means = F.normalize(means, dim=1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)
    return KMeansResult(centroids, counts)


class VectorQuantizer(nn.Module):
    """Maps encoder outputs z (B, D, h, w) to their nearest codebook vectors (K codes).

    In training mode every forward also updates the codebook state (EMA statistics, k-means
    init, dead-code restarts, usage counters); under torch.distributed every rank must call it
    the same number of times, as DDP does. Eval mode never communicates.
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        k, d = config.codebook_size, config.lookup_dim or config.dim
        self.cosine = config.lookup_dim > 0
        # ViT-VQGAN §3.2: look codes up in a small l2-normalised space; project back to D after.
        self.project_in = nn.Linear(config.dim, d) if self.cosine else nn.Identity()
        self.project_out = nn.Linear(d, config.dim) if self.cosine else nn.Identity()
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
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("idle_steps", torch.zeros(k, dtype=torch.long))
        self.register_buffer("last_used", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        # A meter, not model state: a plain attribute, so DDP's buffer broadcast leaves each
        # rank's own eval counts alone.
        self._usage_counts: Tensor | None = None

    @property
    def codebook(self) -> Tensor:
        """(K, d) codes in lookup space (d = lookup_dim or D), l2-normalised when lookup_dim > 0."""
        return F.normalize(self.embed, dim=1) if self.cosine and not self.config.ema else self.embed

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z (B, D, h, w) -> QuantizerOutput(z_q (B, D, h, w), indices (B, h, w), ...)."""
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
        # Straight-through estimator (VQ-VAE §3.1): forward e, backward identity to z.
        z_q = z_l + (e - z_l).detach() if z_l.requires_grad else e.detach()
        z_q = rearrange(self.project_out(z_q), "(b h w) d -> b d h w", b=b, h=h, w=w).to(z.dtype)
        counts = torch.bincount(indices, minlength=self.config.codebook_size)
        perplexity, usage = self._record_usage(z_l.detach(), indices, counts)
        indices = rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w)
        return QuantizerOutput(z_q, indices, losses, perplexity, usage)

    def lookup(self, indices: Tensor) -> Tensor:
        """indices (B, h, w) int64 -> z_q (B, D, h, w), equal to forward's z_q in eval mode."""
        z_q = self.project_out(self.codebook[indices])
        return rearrange(z_q, "b h w d -> b d h w")

    def reset_usage(self) -> None:
        """Start a fresh usage count, e.g. before a validation pass."""
        self._usage_counts = None

    def usage_since_reset(self, sync: bool = True) -> float:
        """Share of the K codes hit since `reset_usage()`; with sync, over all ranks (collective)."""
        counts = self._usage_counts
        if counts is None:
            counts = torch.zeros(self.config.codebook_size, dtype=torch.long, device=self.embed.device)
        if sync and _distributed():
            counts = counts.clone()
            dist.all_reduce(counts)
        return (counts > 0).float().mean().item()

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
            self._kmeans_init_(_gather_rows(z), generator)
        if cfg.restart_after_steps > 0:
            dead = self.idle_steps >= cfg.restart_after_steps  # identical on every rank
            if dead.any():
                self._restart_(dead, _gather_rows(z), generator)

    def _kmeans_init_(self, z: Tensor, generator: torch.Generator) -> None:
        cfg = self.config
        if z.shape[0] < cfg.codebook_size:
            logger.warning(
                "k-means init got %d vectors for %d codes; some codes start as duplicates and will"
                " be restarted (use a larger batch to avoid this)", z.shape[0], cfg.codebook_size
            )
        centroids, counts = kmeans(z, cfg.codebook_size, cfg.kmeans_iters, self.cosine, generator)
        _broadcast_(centroids)
        _broadcast_(counts)
        self.embed.data.copy_(centroids)
        if cfg.ema:
            # Seed the EMA with the k-means statistics, as if this batch had already been seen.
            self.cluster_size.copy_(counts.clamp(min=1))
            self.embed_sum.copy_(centroids * self.cluster_size.unsqueeze(1))
        self.initialised.fill_(True)

    def _restart_(self, dead: Tensor, z: Tensor, generator: torch.Generator) -> None:
        """Replace dead codes by random current encoder outputs (Jukebox §3.2), chosen on rank 0."""
        which = dead.nonzero().squeeze(1)
        fresh = _broadcast_(_sample_rows(z, which.numel(), generator).contiguous())
        self.embed.data[which] = fresh
        if self.config.ema:
            self.cluster_size[which] = 1.0
            self.embed_sum[which] = fresh
        self.idle_steps[which] = 0
        self.restarts += which.numel()
        logger.debug("restarted %d dead codes at step %d", which.numel(), int(self.step))

    @torch.no_grad()
    def _record_usage(self, z: Tensor, indices: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Update meters (and, in training, the codebook); return (perplexity, usage)."""
        self._usage_counts = counts if self._usage_counts is None else self._usage_counts + counts
        perplexity = code_perplexity(counts)
        if not self.training:
            return perplexity, (self._usage_counts > 0).float().mean()
        global_counts = self._update_ema_(z, indices, counts) if self.config.ema else self._sum(counts)
        used = global_counts > 0
        self.idle_steps.add_(1).masked_fill_(used, 0)
        self.last_used.masked_fill_(used, int(self.step))
        self.step += 1
        recent = (self.last_used >= 0) & (self.last_used >= self.step - self.config.usage_window)
        usage = recent.float().mean()
        return perplexity, usage

    @staticmethod
    def _sum(t: Tensor) -> Tensor:
        if _distributed():
            t = t.clone()
            dist.all_reduce(t)
        return t

    def _update_ema_(self, z: Tensor, indices: Tensor, counts: Tensor) -> Tensor:
        """EMA of cluster sizes and sums over all ranks (one all-reduce); returns global counts."""
        cfg = self.config
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, z)
        stats = self._sum(torch.cat([counts.to(sums.dtype).unsqueeze(1), sums], dim=1))
        global_counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.lerp_(global_counts, 1 - cfg.decay)
        self.embed_sum.lerp_(sums, 1 - cfg.decay)
        # Laplace smoothing keeps every cluster size positive, so no code divides by zero.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + cfg.eps) / (n + cfg.codebook_size * cfg.eps) * n
        embed = self.embed_sum / smoothed.unsqueeze(1)
        self.embed.copy_(F.normalize(embed, dim=1) if self.cosine else embed)
        return global_counts
