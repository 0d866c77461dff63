"""Point-cloud semantic segmentation (Pix4Point-style) on S3DIS with a Dr²Net ViT.

Importing this package registers, in MMEngine's root registries: ``S3DISDataset`` (DATASETS), the
point transforms (TRANSFORMS), ``Pix4PointSegmentor`` (MODELS) and ``PointSegMetric`` (METRICS).
The ``PlainViT`` baseline backbone lives in :mod:`dr2net_mm.models` (re-exported here). See
docs/s3dis.md and configs/pix4point_*.py.
"""
import warnings

from ..models import PlainViT
from . import ops
from .metric import PointSegMetric
from .s3dis import CLASSES, S3DISDataset, convert_raw_release, load_room
from .segmentor import Pix4PointSegmentor, PointTokenizer
from .transforms import (PackPointInputs, PointColorDrop, PointGridSample, PointJitter,
                         PointNormalize, PointRandomCrop, PointRandomRotateZ, PointRandomScale,
                         PointVoteSubsets)

__all__ = [
    'ops', 'CLASSES', 'S3DISDataset', 'load_room', 'convert_raw_release', 'PointGridSample',
    'PointVoteSubsets', 'PointNormalize', 'PointRandomRotateZ', 'PointRandomScale', 'PointJitter',
    'PointColorDrop', 'PointRandomCrop', 'PackPointInputs', 'PointTokenizer', 'Pix4PointSegmentor',
    'PlainViT', 'PointSegMetric'
]

# Moved to dr2net_mm.benchmark; still reachable here, with a warning, for code written before.
_MOVED_TO_BENCHMARK = ('synthetic_point_batch', 'points_benchmark_inputs', 'points_training_loss')


def __getattr__(name: str):
    if name in _MOVED_TO_BENCHMARK:
        warnings.warn(f'dr2net_mm.points.{name} moved to dr2net_mm.benchmark.{name}',
                      DeprecationWarning, stacklevel=2)
        from .. import benchmark
        return getattr(benchmark, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
