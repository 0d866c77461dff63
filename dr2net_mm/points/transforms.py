"""Point-cloud transforms, registered in MMEngine's root ``TRANSFORMS`` registry.

They work on NumPy arrays in a results dict with the per-point keys of :data:`POINT_KEYS`
(``coord (N, 3)``, ``color (N, 3)``, ``label (N,)``, ``height (N, 1)``; any subset) and draw random
numbers from ``np.random`` (which MMEngine seeds per worker, so a seeded run repeats exactly);
:class:`PointVoteSubsets` uses its own fixed seed so that evaluation never depends on training.

Typical pipelines (see ``configs/pix4point_dr2net_vit_s_s3dis.py``)::

    train: PointGridSample -> PointNormalize -> PointRandomRotateZ -> PointRandomScale ->
           PointJitter -> PointColorDrop -> PointRandomCrop -> PackPointInputs
    test:  PointNormalize -> PointVoteSubsets -> PackPointInputs      (whole rooms)
"""
import math
from typing import Sequence, Tuple

import numpy as np
import torch
from mmengine.registry import TRANSFORMS
from mmengine.structures import BaseDataElement

from ..checks import check_positive

__all__ = ['POINT_KEYS', 'voxel_inverse', 'one_point_per_voxel', 'PointGridSample', 'PointVoteSubsets',
           'PointNormalize', 'PointRandomRotateZ', 'PointRandomScale', 'PointJitter', 'PointColorDrop',
           'PointRandomCrop', 'PackPointInputs']

POINT_KEYS = ('coord', 'color', 'label', 'height')


def _select(results: dict, idx: np.ndarray) -> dict:
    for key in POINT_KEYS:
        if key in results:
            results[key] = results[key][idx]
    return results


def voxel_inverse(coord: np.ndarray, voxel_size: float) -> np.ndarray:
    """The voxel of every point: ``(N,)`` int64 in ``0..V-1`` for the ``V`` occupied cells of a grid of
    cubes of side ``voxel_size`` anchored at the minimum corner, numbered in (x, y, z) cell order."""
    cell = np.floor((coord - coord.min(0)) / voxel_size).astype(np.int64)
    dims = cell.max(0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    return np.unique(key, return_inverse=True)[1].reshape(-1)


def one_point_per_voxel(inverse: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(V,)`` point indices, entry ``v`` the point of voxel ``v`` with the smallest score (random
    scores: a uniformly random point of each voxel)."""
    order = np.lexsort((scores, inverse))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inverse[order[1:]] != inverse[order[:-1]]
    return order[first]


@TRANSFORMS.register_module()
class PointGridSample:
    """Grid subsampling: keep one random point per occupied ``voxel_size`` cube (PointNeXt's
    ``voxelize``; 0.04 m for S3DIS). All per-point keys are subsampled alike."""

    def __init__(self, voxel_size: float = 0.04):
        self.voxel_size = check_positive('voxel_size', voxel_size)

    def __call__(self, results: dict) -> dict:
        inverse = voxel_inverse(results['coord'], self.voxel_size)
        return _select(results, one_point_per_voxel(inverse, np.random.random(len(inverse))))

    def __repr__(self) -> str:
        return f'{type(self).__name__}(voxel_size={self.voxel_size})'


@TRANSFORMS.register_module()
class PointVoteSubsets:
    """For full-room evaluation: keep every point and add ``num_votes`` grid subsamples of it.

    Adds ``voxel_inverse (N,)`` (the voxel of each point) and ``vote_indices (num_votes, V)`` (row v:
    one random point per voxel, in voxel order, so subsample position ``voxel_inverse[i]`` is the
    representative of point ``i``). The model predicts each subsample (in crops) and gives every
    original point the average class probabilities of its voxel's representatives. Random choices come
    from ``np.random.default_rng(seed)``, the same for every room and run."""

    def __init__(self, voxel_size: float = 0.04, num_votes: int = 1, seed: int = 0):
        self.voxel_size = check_positive('voxel_size', voxel_size)
        if isinstance(num_votes, bool) or not isinstance(num_votes, int) or num_votes < 1:
            raise ValueError(f'num_votes must be an int >= 1, got {num_votes!r}')
        self.num_votes, self.seed = num_votes, seed

    def __call__(self, results: dict) -> dict:
        inverse = voxel_inverse(results['coord'], self.voxel_size)
        rng = np.random.default_rng(self.seed)
        results['voxel_inverse'] = inverse
        results['vote_indices'] = np.stack([one_point_per_voxel(inverse, rng.random(len(inverse)))
                                            for _ in range(self.num_votes)])
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(voxel_size={self.voxel_size}, num_votes={self.num_votes}, '
                f'seed={self.seed})')


@TRANSFORMS.register_module()
class PointNormalize:
    """``color <- color / 255`` and a ``height (N, 1)`` feature ``z - min(z)`` over the given points
    (before cropping: the height above the room's lowest point, i.e. the floor). The coordinates are
    centred per crop inside the model (``Pix4PointSegmentor.centre``), where test crops are made."""

    def __call__(self, results: dict) -> dict:
        results['color'] = (results['color'] / 255.0).astype(np.float32)
        z = results['coord'][:, 2:3]
        results['height'] = (z - z.min()).astype(np.float32)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


@TRANSFORMS.register_module()
class PointRandomRotateZ:
    """Rotate ``coord`` about the vertical axis through the centre of its x-y bounding box by an angle
    uniform in ``[-max_angle, max_angle]`` (radians)."""

    def __init__(self, max_angle: float = math.pi):
        self.max_angle = check_positive('max_angle', max_angle)

    def __call__(self, results: dict) -> dict:
        angle = np.random.uniform(-self.max_angle, self.max_angle)
        cos, sin = math.cos(angle), math.sin(angle)
        coord = results['coord']
        centre = (coord[:, :2].min(0) + coord[:, :2].max(0)) / 2
        xy = coord[:, :2] - centre
        rotated = np.stack([cos * xy[:, 0] - sin * xy[:, 1], sin * xy[:, 0] + cos * xy[:, 1]], 1)
        results['coord'] = np.concatenate([rotated + centre, coord[:, 2:]], 1).astype(np.float32)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(max_angle={self.max_angle})'


@TRANSFORMS.register_module()
class PointRandomScale:
    """``coord <- coord · s`` with ``s`` uniform in ``scale`` (one factor per axis if
    ``anisotropic``, else one for all)."""

    def __init__(self, scale: Tuple[float, float] = (0.9, 1.1), anisotropic: bool = True):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f'scale must be (low, high) with 0 < low <= high, got {scale!r}')
        self.scale, self.anisotropic = (float(scale[0]), float(scale[1])), bool(anisotropic)

    def __call__(self, results: dict) -> dict:
        factor = np.random.uniform(*self.scale, size=3 if self.anisotropic else 1)
        results['coord'] = (results['coord'] * factor).astype(np.float32)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(scale={self.scale}, anisotropic={self.anisotropic})'


@TRANSFORMS.register_module()
class PointJitter:
    """``coord <- coord + clip(n, -clip, clip)``, ``n ~ N(0, sigma²)`` per point and axis."""

    def __init__(self, sigma: float = 0.005, clip: float = 0.02):
        self.sigma, self.clip = check_positive('sigma', sigma), check_positive('clip', clip)

    def __call__(self, results: dict) -> dict:
        noise = np.clip(np.random.normal(0.0, self.sigma, results['coord'].shape), -self.clip,
                        self.clip)
        results['coord'] = (results['coord'] + noise).astype(np.float32)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(sigma={self.sigma}, clip={self.clip})'


@TRANSFORMS.register_module()
class PointColorDrop:
    """With probability ``prob``, set every colour of the sample to 0 (PointNeXt's ChromaticDrop)."""

    def __init__(self, prob: float = 0.2):
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ValueError(f'prob must be in [0, 1], got {prob!r}')
        self.prob = float(prob)

    def __call__(self, results: dict) -> dict:
        if np.random.random() < self.prob:
            results['color'] = np.zeros_like(results['color'])
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class PointRandomCrop:
    """A fixed budget of ``num_points`` points per sample. More points: the ``num_points`` nearest ones
    (in x, y, z) to a random point (PointNeXt's ``crop_pc``, a ball-shaped crop). Fewer: all points plus
    random repeats (each repeat keeps its label, so it counts twice in the loss)."""

    def __init__(self, num_points: int = 24000):
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f'num_points must be an int >= 1, got {num_points!r}')
        self.num_points = num_points

    def __call__(self, results: dict) -> dict:
        coord = results['coord']
        n = len(coord)
        if n > self.num_points:
            centre = coord[np.random.randint(n)]
            squared = ((coord - centre) ** 2).sum(1)
            idx = np.sort(np.argpartition(squared, self.num_points - 1)[:self.num_points])
        else:
            idx = np.concatenate([np.arange(n), np.random.randint(0, n, self.num_points - n)])
        return _select(results, idx)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_points={self.num_points})'


@TRANSFORMS.register_module()
class PackPointInputs:
    """-> ``dict(inputs, data_samples)`` for ``Pix4PointSegmentor``.

    ``inputs``: float32 tensor ``(N, 3 + C)``, the columns ``x y z`` then the ``feature_keys`` arrays
    (default ``color`` (3) and ``height`` (1): C = 4). ``data_samples``: a ``BaseDataElement`` with
    ``gt_label (N,)`` int64 and, for full-room evaluation, ``voxel_inverse`` and ``vote_indices``
    (:class:`PointVoteSubsets`); metainfo ``room``, ``area``, ``num_points``."""

    def __init__(self, feature_keys: Sequence[str] = ('color', 'height')):
        self.feature_keys = tuple(feature_keys)

    def __call__(self, results: dict) -> dict:
        missing = [k for k in ('coord', 'label') + self.feature_keys if k not in results]
        if missing:
            raise KeyError(f'PackPointInputs: results have no {missing} (keys: {sorted(results)}); '
                           "put PointNormalize before it for 'color'/'height', or change feature_keys")
        columns = [results['coord']] + [results[k].reshape(len(results['coord']), -1)
                                        for k in self.feature_keys]
        inputs = torch.from_numpy(np.concatenate(columns, 1).astype(np.float32))
        sample = BaseDataElement(metainfo=dict(room=results.get('room'), area=results.get('area'),
                                               num_points=len(inputs)))
        sample.gt_label = torch.from_numpy(np.asarray(results['label'], dtype=np.int64))
        for key in ('voxel_inverse', 'vote_indices'):
            if key in results:
                setattr(sample, key, torch.from_numpy(np.asarray(results[key], dtype=np.int64)))
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(feature_keys={self.feature_keys})'
