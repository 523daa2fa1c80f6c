"""Precision, recall, density and coverage: cases whose answer is known, an independent numpy
implementation of both papers' definitions, and memory that stays bounded by the chunk."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from eval import precision_recall
from eval.precision_recall import equal_subsets, knn_radii, manifold_scores


def gaussian(n, d=16, seed=0, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def numpy_prdc(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float, float, float]:
    """Kynkaanniemi et al. (2019) and Naeem et al. (2020), written from the papers: full distance
    matrices, radii as the k-th smallest distance to another point of the same set."""
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    radius = lambda x: np.sort(dist(x, x), axis=1)[:, k]  # noqa: E731  (column 0 is the point itself)
    r_real, r_fake = radius(real), radius(fake)
    d = dist(real, fake)  # (N, M)
    precision = (d <= r_real[:, None]).any(axis=0).mean()
    recall = (d <= r_fake[None, :]).any(axis=1).mean()
    density = (d < r_real[:, None]).sum() / (k * len(fake))
    coverage = (d.min(axis=1) < r_real).mean()
    return precision, recall, density, coverage


def test_identical_sets_have_precision_recall_and_coverage_one():
    x = gaussian(50)
    scores = manifold_scores(x, x.clone())
    assert scores.precision == scores.recall == scores.coverage == 1.0
    assert scores.density >= 1 / 3  # each sample lies inside at least its own twin's ball


def test_disjoint_far_apart_sets_score_zero():
    scores = manifold_scores(gaussian(40, seed=1), gaussian(40, seed=2, shift=1000.0))
    assert scores == (0.0, 0.0, 0.0, 0.0)


def test_samples_from_half_the_reference_are_precise_but_recall_half():
    half_a, half_b = gaussian(30, seed=3), gaussian(30, seed=4, shift=1000.0)  # two far-apart modes
    scores = manifold_scores(torch.cat([half_a, half_b]), half_a.clone())  # a generator that drops mode b
    assert scores.precision == 1.0 and scores.recall == 0.5 and scores.coverage == 0.5


@pytest.mark.parametrize("chunk", [7, 64, 10_000])  # blocks that do not divide N, and one block
def test_equals_a_plain_numpy_implementation(chunk):
    real, fake = gaussian(300, d=64, seed=5), gaussian(250, d=64, seed=6, shift=0.25)
    ours = manifold_scores(real, fake, chunk=chunk)
    expected = numpy_prdc(real.numpy(), fake.numpy())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert 0 < ours.precision < 1 and 0 < ours.recall < 1  # a case that tells the definitions apart


def test_radii_are_the_kth_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(x, k=3), torch.tensor([6.0, 5.0, 3.0, 5.0, 9.0], dtype=torch.float64))


def test_a_point_on_a_ball_boundary_is_inside_for_precision_recall_and_outside_for_density_coverage():
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)  # radii 6, 5, 3, 5, 9
    fake = torch.tensor([[19.0], [30.0], [31.0], [32.0], [33.0]], dtype=torch.float64)  # 19's radius: 13
    # 19 lies on 10's ball (9 away); 6 lies on 19's ball (13 away), and so does nothing else.
    assert manifold_scores(real, fake) == (1 / 5, 2 / 5, 0.0, 0.0)


def test_equal_subsets_are_seeded_and_of_the_smaller_size():
    real, fake = gaussian(30), gaussian(12, seed=1)
    a, b = equal_subsets(real, fake)
    assert len(a) == len(b) == 12 and torch.equal(b.sort(0).values, fake.sort(0).values)
    a2, _ = equal_subsets(real, fake)
    assert torch.equal(a, a2) and not torch.equal(a, real[:12])  # not the first rows: a split may be sorted


def test_memory_stays_at_chunk_times_n():
    # One (N, N) float64 matrix is 4000^2 x 8 B = 128 MB (unchunked, the peak grows by ~400 MB);
    # blocks of 250 rows are 8 MB (the peak grows by ~80 MB, most of it torch's own workspace).
    # The module is loaded from its file alone: importing the eval package would import transformers.
    code = f"""
import importlib.util, resource, torch
spec = importlib.util.spec_from_file_location("precision_recall", "{precision_recall.__file__}")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
x, y = torch.randn(4000, 8, dtype=torch.float64), torch.randn(4000, 8, dtype=torch.float64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
module.manifold_scores(x, y, chunk=250)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout)
    assert grown < 150_000_000
