"""Point-cloud operators in pure PyTorch (CPU and GPU, no compiled extension).

Shapes: ``B`` batch, ``N`` points, ``M`` query points / centres, ``C`` channels, ``k`` neighbours.
Distances are Euclidean. Pairwise distances are computed in chunks of query rows, so memory stays at
about ``max_pairs`` distance entries (default 2^24, 64 MiB in float32) whatever ``M·N``.

* :func:`farthest_point_sample` -- greedy farthest point sampling (FPS), start index 0;
* :func:`knn` -- the ``k`` nearest points of every query;
* :func:`gather_points` -- ``values[b, idx[b, ...]]`` for batched index tensors;
* :func:`inverse_distance_interpolate` -- PointNet++ feature propagation (inverse-distance weights
  over the ``k`` nearest sources).
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['farthest_point_sample', 'knn', 'gather_points', 'inverse_distance_interpolate']

MAX_PAIRS = 2**24


def _check_xyz(name: str, xyz: Tensor) -> None:
    if not isinstance(xyz, Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, Tensor) else type(xyz).__name__
        raise ValueError(f'{name} must be a (B, N, 3) tensor of coordinates, got {shape}')


def _check_count(name: str, value: int, available: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be an int >= 1, got {value!r}')
    if value > available:
        raise ValueError(f'{name}={value} but only {available} {what} are available; use at most '
                         f'{available} or give more points')


def farthest_point_sample(xyz: Tensor, m: int) -> Tensor:
    """Greedy farthest point sampling: ``(B, N, 3)`` -> indices ``(B, m)`` (int64).

    The first index is 0 in every batch element (deterministic: no random start; shuffle the points
    beforehand for a random one). Then, with ``d(p) = min_{s in S} |p - s|`` over the indices ``S``
    chosen so far, the next index is ``argmax_p d(p)``, the first one on ties. Once every distinct
    point is chosen (``m`` larger than the number of distinct points), ``d`` is 0 everywhere and index 0
    repeats. Not differentiable (indices).
    """
    _check_xyz('xyz', xyz)
    batch, n, _ = xyz.shape
    _check_count('m', m, n, 'points')
    with torch.no_grad():
        idx = torch.zeros(batch, m, dtype=torch.long, device=xyz.device)
        nearest = torch.full((batch, n), float('inf'), dtype=xyz.dtype, device=xyz.device)
        rows = torch.arange(batch, device=xyz.device)
        farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
        for i in range(m):
            idx[:, i] = farthest
            chosen = xyz[rows, farthest]  # (B, 3)
            nearest = torch.minimum(nearest, ((xyz - chosen[:, None]) ** 2).sum(-1))
            farthest = nearest.argmax(-1)
    return idx


def knn(query: Tensor, points: Tensor, k: int, max_pairs: int = MAX_PAIRS) -> Tuple[Tensor, Tensor]:
    """The ``k`` nearest ``points`` of every query point.

    Args:
        query: ``(B, M, 3)``; points: ``(B, N, 3)``; k: ``1 <= k <= N``.
        max_pairs: about how many query-point distances are held at once (chunking over queries).

    Returns:
        ``(dist, idx)``, both ``(B, M, k)``, sorted by increasing distance: ``dist[b, i, j] =
        |query[b, i] - points[b, idx[b, i, j]]|`` (Euclidean; differentiable in both inputs) and the
        int64 indices into ``points``. Equal distances come in an unspecified order.
    """
    _check_xyz('query', query)
    _check_xyz('points', points)
    if query.shape[0] != points.shape[0]:
        raise ValueError(f'query and points must have the same batch size, got {query.shape[0]} and '
                         f'{points.shape[0]}')
    batch, m, _ = query.shape
    n = points.shape[1]
    _check_count('k', k, n, 'points')
    rows = max(1, max_pairs // max(1, batch * n))
    dists, idxs = [], []
    for start in range(0, m, rows):
        chunk = query[:, start:start + rows]
        with torch.no_grad():  # exact differences, not the |q|² + |p|² - 2q·p shortcut
            dist = torch.cdist(chunk, points, compute_mode='donot_use_mm_for_euclid_dist')
            idx = dist.topk(k, dim=-1, largest=False, sorted=True).indices  # dist: (B, rows, N)
        idxs.append(idx)
        dists.append((chunk[:, :, None] - gather_points(points, idx)).norm(dim=-1))
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def gather_points(values: Tensor, idx: Tensor) -> Tensor:
    """``out[b, i..., :] = values[b, idx[b, i...], :]``: ``values (B, N, C)``, ``idx (B, *S)`` int64 ->
    ``(B, *S, C)`` (differentiable in ``values``)."""
    if values.dim() != 3:
        raise ValueError(f'values must be (B, N, C), got {tuple(values.shape)}')
    if idx.shape[0] != values.shape[0]:
        raise ValueError(f'idx batch size {idx.shape[0]} differs from values batch size '
                         f'{values.shape[0]}')
    batch, _, channels = values.shape
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return values.gather(1, flat).reshape(*idx.shape, channels)


def inverse_distance_interpolate(target_xyz: Tensor, source_xyz: Tensor, source_feats: Tensor,
                                 k: int = 3, eps: float = 1e-8,
                                 max_pairs: int = MAX_PAIRS) -> Tensor:
    """PointNet++ feature propagation: features of ``M`` sources at ``N`` targets.

    With ``j = 1..k`` the ``k`` nearest sources of target ``x`` at distances ``d_j``::

        f(x) = sum_j w_j f_j / sum_j w_j,    w_j = 1 / (d_j + eps)

    so a target on a source gets (almost exactly) that source's features. Shapes: ``target_xyz
    (B, N, 3)``, ``source_xyz (B, M, 3)``, ``source_feats (B, M, C)`` -> ``(B, N, C)``. Differentiable
    in ``source_feats``; the weights are treated as constants (as PointNet++'s ``three_interpolate``).
    """
    _check_xyz('target_xyz', target_xyz)
    _check_xyz('source_xyz', source_xyz)
    if source_feats.dim() != 3 or source_feats.shape[:2] != source_xyz.shape[:2]:
        raise ValueError(f'source_feats must be (B, M, C) with (B, M) = {tuple(source_xyz.shape[:2])} '
                         f'from source_xyz, got {tuple(source_feats.shape)}')
    _check_count('k', k, source_xyz.shape[1], 'source points')
    with torch.no_grad():
        dist, idx = knn(target_xyz, source_xyz, k, max_pairs=max_pairs)
        weight = 1.0 / (dist + eps)
        weight = (weight / weight.sum(-1, keepdim=True)).to(source_feats.dtype)  # (B, N, k)
    return (gather_points(source_feats, idx) * weight[..., None]).sum(-2)
