"""Run under `accelerate launch --num_processes 2` by test_quantize.py: codebooks must stay equal.

Each rank feeds DIFFERENT data (seeded by rank) through the quantizer in training mode for several
steps, covering the k-means init, EMA all-reduce and dead-code restarts; then every buffer and
parameter is gathered and compared across ranks. Exits non-zero on any mismatch.
"""

import torch
from accelerate import Accelerator

from stage1_vqvae.quantize import QuantizerConfig, VectorQuantizer

STEPS = 8


def batch(rank: int, step: int) -> torch.Tensor:
    """(B, D, h, w) from a few clusters that differ between ranks, so most codes go unused."""
    gen = torch.Generator().manual_seed(1000 * rank + step)
    centres = 3.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(rank))
    which = torch.randint(4, (2 * 4 * 4,), generator=gen)
    z = centres[which] + 0.1 * torch.randn(2 * 4 * 4, 16, generator=gen)
    return z.reshape(2, 4, 4, 16).permute(0, 3, 1, 2).contiguous()


def check(accelerator: Accelerator, ema: bool, lookup_dim: int) -> None:
    cfg = QuantizerConfig(codebook_size=32, dim=16, ema=ema, lookup_dim=lookup_dim, restart_after_steps=2)
    torch.manual_seed(accelerator.process_index)  # different initial weights: init must sync them
    model = VectorQuantizer(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if list(model.parameters()) else None
    if optimizer is not None:
        model, optimizer = accelerator.prepare(model, optimizer)  # DDP: broadcast_buffers on
    for step in range(STEPS):
        z = batch(accelerator.process_index, step).requires_grad_(True)
        out = model(z)
        loss = out.z_q.square().mean() + sum(out.losses.values())
        accelerator.backward(loss)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
    quantizer = accelerator.unwrap_model(model)
    if int(quantizer.restarts) == 0:
        raise SystemExit(f"ema={ema} lookup_dim={lookup_dim}: no dead-code restart happened")
    state = {**dict(quantizer.named_buffers()), **dict(quantizer.named_parameters())}
    for name, tensor in state.items():
        gathered = accelerator.gather(tensor.detach().float().reshape(1, -1))
        if not torch.equal(gathered[0], gathered[1]):
            raise SystemExit(f"ema={ema} lookup_dim={lookup_dim}: {name} differs between ranks")


def main() -> None:
    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes != 2:
        raise SystemExit(f"expected 2 processes, got {accelerator.num_processes}")
    check(accelerator, ema=True, lookup_dim=0)
    check(accelerator, ema=False, lookup_dim=8)


if __name__ == "__main__":
    main()
