"""Run under `accelerate launch --num_processes 2` by quantizers/test_vq.py: what must agree across ranks.

Each rank feeds DIFFERENT data (seeded by rank) through the quantizers in training mode:
- VQ: over several steps covering the k-means init, EMA all-reduce and dead-code restarts, every
  buffer and parameter must stay equal on both ranks;
- FSQ and LFQ: the usage meters (`step`, `last_used`) must count both ranks' codes, identically
  (VQ's are among the buffers checked above);
- LFQ: the codebook entropy must be that of both ranks' batches together, and the gradients DDP
  averages must equal those of one process holding both batches.
Exits non-zero on any mismatch.
"""

import copy

import torch
from accelerate import Accelerator

from stage1_vqvae.quantizers import build_quantizer, quantizer_settings

STEPS = 8


def batch(rank: int, step: int) -> torch.Tensor:
    """(B, D, h, w) from a few clusters that differ between ranks, so most codes go unused."""
    gen = torch.Generator().manual_seed(1000 * rank + step)
    centres = 3.0 * torch.randn(4, 16, generator=torch.Generator().manual_seed(rank))
    which = torch.randint(4, (2 * 4 * 4,), generator=gen)
    z = centres[which] + 0.1 * torch.randn(2 * 4 * 4, 16, generator=gen)
    return z.reshape(2, 4, 4, 16).permute(0, 3, 1, 2).contiguous()


def same_everywhere(accelerator: Accelerator, module: torch.nn.Module, what: str) -> None:
    state = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    for name, tensor in state.items():
        gathered = accelerator.gather(tensor.detach().float().reshape(1, -1))
        if not torch.equal(gathered[0], gathered[1]):
            raise SystemExit(f"{what}: {name} differs between ranks")


def train(accelerator: Accelerator, settings: dict, lr: float = 0.1):
    """A quantizer of `settings` (weights made different per rank, as DDP must fix) after STEPS steps."""
    torch.manual_seed(accelerator.process_index)
    model = build_quantizer(quantizer_settings(settings), 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr) if list(model.parameters()) else None
    if optimizer is not None:
        model, optimizer = accelerator.prepare(model, optimizer)  # DDP: broadcast_buffers on
    for step in range(STEPS):
        z = batch(accelerator.process_index, step).requires_grad_(True)
        out = model(z)
        accelerator.backward(out.z_q.square().mean() + sum(out.losses.values(), torch.zeros(())))
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
    return accelerator.unwrap_model(model)


def check_vq(accelerator: Accelerator, ema: bool, lookup_dim: int) -> None:
    settings = {"kind": "vq", "codebook_size": 32, "ema": ema, "lookup_dim": lookup_dim, "restart_after_steps": 2}
    quantizer = train(accelerator, settings)
    if int(quantizer.restarts) == 0:
        raise SystemExit(f"{settings}: no dead-code restart happened")
    same_everywhere(accelerator, quantizer, str(settings))


def check_meters(accelerator: Accelerator, settings: dict) -> None:
    """FSQ and LFQ, with fixed weights: the codes of the last step can be computed again after it."""
    quantizer = train(accelerator, settings, lr=0.0)
    same_everywhere(accelerator, quantizer, str(settings))
    codes = [set(quantizer.eval()(batch(rank, STEPS - 1)).indices.flatten().tolist()) for rank in (0, 1)]
    if set(torch.nonzero(quantizer.last_used == STEPS - 1).flatten().tolist()) != codes[0] | codes[1]:
        raise SystemExit(f"{settings}: the last step's usage does not count both ranks' codes")
    quantizer.reset_usage()
    quantizer(batch(accelerator.process_index, STEPS - 1))
    if abs(quantizer.usage_since_reset(sync=True) - len(codes[0] | codes[1]) / quantizer.codebook_size) > 1e-6:
        raise SystemExit(f"{settings}: usage_since_reset(sync=True) does not count both ranks' codes")


def check_lfq_entropy(accelerator: Accelerator) -> None:
    settings = quantizer_settings({"kind": "lfq", "bits": 6, "entropy_temperature": 1.0, "entropy_group_bits": 3})
    torch.manual_seed(0)
    single = build_quantizer(settings, 16).train()
    model = accelerator.prepare(copy.deepcopy(single))
    z = batch(accelerator.process_index, 0)
    out = model(z)
    accelerator.backward(out.z_q.square().mean() + sum(out.losses.values()))
    both = accelerator.gather(z)  # (2B, D, h, w): rank 0's rows, then rank 1's
    x_local = single.project_in(z.permute(0, 2, 3, 1).reshape(-1, 16))
    x_both = single.project_in(both.permute(0, 2, 3, 1).reshape(-1, 16))
    ranks_entropy = accelerator.unwrap_model(model)._codebook_entropy(x_local)
    if not torch.allclose(ranks_entropy, single._codebook_entropy(x_both), rtol=1e-6, atol=1e-7):
        raise SystemExit("lfq: the codebook entropy is not that of both ranks' batches")
    reference = single(both)  # one process, both batches
    (reference.z_q.square().mean() + sum(reference.losses.values())).backward()
    for (name, p), q in zip(single.named_parameters(), accelerator.unwrap_model(model).parameters()):
        if not torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7):
            raise SystemExit(f"lfq: the gradient of {name} differs from one process holding both batches")


def main() -> None:
    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes != 2:
        raise SystemExit(f"expected 2 processes, got {accelerator.num_processes}")
    check_vq(accelerator, ema=True, lookup_dim=0)
    check_vq(accelerator, ema=False, lookup_dim=8)
    for settings in ({"kind": "fsq", "levels": [5, 3]}, {"kind": "lfq", "bits": 5}):
        check_meters(accelerator, settings)
    check_lfq_entropy(accelerator)
    # Leave together and close gloo: a rank that exits while the other is still in a collective
    # aborts it ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
