"""MaskGIT's objective: the cosine masking schedule, masked-only loss, and fixed val masks."""

import math

import pytest
import torch
import torch.nn.functional as F

from stage2_prior.maskgit import build_maskgit, mask_token
from stage2_prior.masking import cosine_mask_ratio, masked_scores, training_mask, val_masks
from stage2_prior.vocab import PriorVocab

K, N, H, W = 16, 4, 4, 4
T = H * W
VOCAB = PriorVocab(K, N)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_maskgit("demo", K, N, H, W, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4).eval()


def test_cosine_schedule_ends():
    ratios = cosine_mask_ratio(torch.tensor([0.0, 1 / 3, 1.0]))
    assert ratios[0] == 1 and ratios[1] == pytest.approx(math.cos(math.pi / 6)) and ratios[2] == pytest.approx(0, abs=1e-7)


def test_training_masks_follow_the_cosine_schedule():
    """ceil(cos(pi/2 u) T) >= 1 masked codes per grid, u ~ U(0, 1)."""
    torch.manual_seed(0)
    mask = training_mask(20_000, T)
    torch.manual_seed(0)
    u = torch.rand(20_000)
    expected = torch.ceil(torch.cos(math.pi / 2 * u) * T).clamp(1, T)
    assert torch.equal(mask.sum(1).float(), expected) and mask.sum(1).min() >= 1
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000  # E over u, by the midpoint rule
    assert float(mask.float().mean()) == pytest.approx(float(torch.ceil(torch.cos(math.pi / 2 * grid) * T).mean() / T),
                                                       abs=0.005)
    # The positions are uniform: every position is masked about equally often.
    assert float(mask.float().mean(0).std()) < 0.01


def test_each_process_masks_its_slice_of_the_global_draw():
    torch.manual_seed(1)
    whole = training_mask(64, T)
    for rank in (0, 1):
        torch.manual_seed(1)
        assert torch.equal(training_mask(32, T, rank, 2), whole[rank * 32 : (rank + 1) * 32])


def test_val_masks_are_fixed_per_item_and_nested():
    rows = torch.tensor([3, 7, 3])
    first, again = val_masks(rows, T, (0.5, 0.9)), val_masks(torch.tensor([7]), T, (0.5, 0.9))
    assert torch.equal(first[0.5][1], again[0.5][0]) and torch.equal(first[0.5][0], first[0.5][2])
    assert not torch.equal(first[0.5][0], first[0.5][1])
    assert first[0.5].sum(1).tolist() == [8] * 3 and first[0.9].sum(1).tolist() == [math.ceil(0.9 * T)] * 3
    assert bool((first[0.9] | ~first[0.5]).all()), "the 0.9 mask holds the 0.5 mask"


def test_scores_are_the_cross_entropy_of_masked_codes_only(model):
    codes = torch.randint(0, K, (3, H, W), generator=torch.Generator().manual_seed(2))
    index = torch.tensor([0, 2, N])
    mask = val_masks(torch.arange(3), T, (0.5,))[0.5]
    scores = masked_scores(model, VOCAB, codes, index, mask)
    flat = codes.flatten(1)
    ids = torch.cat([VOCAB.cond_token(index)[:, None], torch.where(mask, mask_token(VOCAB), flat)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, 1:, :K]
        expected = F.cross_entropy(logits.transpose(1, 2), flat, reduction="none")
    torch.testing.assert_close(scores.nll, (expected * mask).sum(1))
    assert scores.count.tolist() == [8.0] * 3
    # Codes under the mask are never input: other codes there change the targets, not the logits.
    other = torch.where(mask, (flat + 1) % K, flat).reshape(codes.shape)
    with torch.no_grad():
        moved = F.cross_entropy(logits.transpose(1, 2), other.flatten(1), reduction="none")
    torch.testing.assert_close(masked_scores(model, VOCAB, other, index, mask).nll, (moved * mask).sum(1))
