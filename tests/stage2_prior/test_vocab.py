import pytest
import torch

from stage2_prior.vocab import PriorVocab

K, N = 16, 4


def test_layout():
    vocab = PriorVocab(K, N)
    assert (vocab.uncond_index, vocab.uncond_token, vocab.vocab_size) == (N, K + N, K + N + 1)
    index = vocab.class_index(torch.tensor([-1, 0, N - 1]))
    assert index.tolist() == [N, 0, N - 1] and vocab.cond_token(index).tolist() == [K + N, K, K + N - 1]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_labels_drops_about_p(p):
    torch.manual_seed(0)
    index = torch.arange(20_000) % N
    dropped = PriorVocab(K, N).drop_labels(index, p)
    rate = float((dropped == N).float().mean())
    assert rate == pytest.approx(p, abs=0.015)  # 4 standard deviations at n = 20,000
    kept = dropped != N
    assert torch.equal(dropped[kept], index[kept]), "a kept label must stay as it was"


def test_no_dropout_leaves_labels_alone():
    index = torch.arange(64) % N
    assert torch.equal(PriorVocab(K, N).drop_labels(index, 0.0), index)


def test_each_process_drops_its_slice_of_the_global_draw():
    """2 processes of B rows drop exactly what 1 process of 2B rows drops (same seed on every rank)."""
    vocab, index = PriorVocab(K, N), torch.arange(64) % N
    torch.manual_seed(1)
    whole = vocab.drop_labels(index, 0.3)
    for rank in (0, 1):
        torch.manual_seed(1)
        assert torch.equal(vocab.drop_labels(index[rank * 32 : (rank + 1) * 32], 0.3, rank, 2), whole[rank * 32 : (rank + 1) * 32])
