"""dr2net_mm.points.ops against brute-force references on small inputs."""
import itertools

import pytest
import torch

from dr2net_mm.points.ops import (farthest_point_sample, gather_points, inverse_distance_interpolate,
                                  knn)


def cloud(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def greedy_fps(points, m):
    """Textbook FPS on one (N, 3) cloud with plain Python loops: start at 0, then repeatedly the point
    whose distance to the chosen set is largest (first on ties)."""
    chosen = [0]
    while len(chosen) < m:
        best, best_d = None, -1.0
        for i, p in enumerate(points.tolist()):
            d = min(sum((a - b) ** 2 for a, b in zip(p, points[j].tolist())) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_fps_matches_greedy_reference_per_batch_element():
    xyz = cloud(3, 40, 3)
    idx = farthest_point_sample(xyz, 12)
    assert idx.shape == (3, 12) and idx.dtype == torch.int64
    for b in range(3):
        assert idx[b].tolist() == greedy_fps(xyz[b], 12)


def test_fps_on_a_known_configuration():
    # points on a line at 0, 1, 2, 10: start 0 -> farthest 10 -> then 2 (distance 2 from 0, 8 from 10
    # -> min 2) beats 1 (min 1)
    xyz = torch.tensor([[[0., 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0]]])
    assert farthest_point_sample(xyz, 4).tolist() == [[0, 3, 2, 1]]
    with pytest.raises(ValueError, match='m=5 but only 4 points'):
        farthest_point_sample(xyz, 5)


def test_knn_matches_brute_force_sorted_distances_and_indices():
    query, points = cloud(2, 7, 3, seed=1), cloud(2, 30, 3, seed=2)
    dist, idx = knn(query, points, 5, max_pairs=50)  # max_pairs=50: one query row per chunk
    assert dist.shape == idx.shape == (2, 7, 5)
    for b, i in itertools.product(range(2), range(7)):
        all_d = [((query[b, i] - p) ** 2).sum().sqrt().item() for p in points[b]]
        order = sorted(range(30), key=lambda j: all_d[j])[:5]
        assert idx[b, i].tolist() == order
        assert dist[b, i].tolist() == pytest.approx([all_d[j] for j in order], abs=1e-12)
    with pytest.raises(ValueError, match='k=31 but only 30 points'):
        knn(query, points, 31)


def test_gather_points_is_batched_indexing():
    values = cloud(2, 6, 4)
    idx = torch.tensor([[[0, 5], [2, 2]], [[1, 0], [3, 4]]])
    out = gather_points(values, idx)
    assert out.shape == (2, 2, 2, 4)
    for b, i, j in itertools.product(range(2), range(2), range(2)):
        assert torch.equal(out[b, i, j], values[b, idx[b, i, j]])


def test_inverse_distance_interpolation_equals_the_formula_and_passes_gradients():
    target, source = cloud(2, 9, 3, seed=3), cloud(2, 8, 3, seed=4)
    feats = cloud(2, 8, 5, seed=5).requires_grad_(True)
    out = inverse_distance_interpolate(target, source, feats, k=3, eps=1e-8)
    assert out.shape == (2, 9, 5)
    expected = torch.zeros(2, 9, 5, dtype=torch.float64)
    for b, n in itertools.product(range(2), range(9)):
        d = ((source[b] - target[b, n]) ** 2).sum(-1).sqrt()
        near = d.argsort()[:3]
        w = 1.0 / (d[near] + 1e-8)
        expected[b, n] = (w[:, None] * feats[b, near].detach()).sum(0) / w.sum()
    assert torch.allclose(out.detach(), expected, rtol=1e-12, atol=1e-12)
    # the gradient of sum(out · g) w.r.t. a source feature is the sum of its weights times g
    grad_out = cloud(2, 9, 5, seed=6)
    (out * grad_out).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    weights = torch.autograd.functional.jacobian(
        lambda f: inverse_distance_interpolate(target, source, f, k=3), feats.detach())
    assert torch.allclose(feats.grad, torch.einsum('bnc,bncamd->amd', grad_out, weights))


def test_interpolation_at_a_source_returns_its_features():
    source = torch.tensor([[[0., 0, 0], [1, 0, 0], [0, 1, 0]]])
    feats = torch.tensor([[[1.], [2.], [3.]]])
    out = inverse_distance_interpolate(source, source, feats, k=3)
    assert torch.allclose(out, feats, atol=1e-6)
    # a point halfway between two sources, far from the third: close to their mean
    mid = inverse_distance_interpolate(torch.tensor([[[0.5, 0, 0]]]), source, feats, k=2)
    assert mid.item() == pytest.approx(1.5)


def test_bad_shapes_give_clear_errors():
    with pytest.raises(ValueError, match=r'xyz must be a \(B, N, 3\) tensor'):
        farthest_point_sample(torch.zeros(10, 3), 2)
    with pytest.raises(ValueError, match='same batch size'):
        knn(torch.zeros(1, 2, 3), torch.zeros(2, 5, 3), 1)
    with pytest.raises(ValueError, match='source_feats must be'):
        inverse_distance_interpolate(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), torch.zeros(1, 4, 2))
