"""Point-cloud semantic segmentation (Pix4Point-style) on S3DIS with a Dr²Net ViT.

Importing this package registers, in MMEngine's root registries: ``S3DISDataset`` (DATASETS), the
point transforms (TRANSFORMS), ``Pix4PointSegmentor`` and ``PlainViT`` (MODELS) and
``PointSegMetric`` (METRICS). See docs/s3dis.md and configs/pix4point_*.py.
"""
from . import ops
from .metric import PointSegMetric
from .model import (Pix4PointSegmentor, PlainViT, PointTokenizer, points_benchmark_inputs,
                    points_training_loss, synthetic_point_batch)
from .s3dis import CLASSES, S3DISDataset, convert_raw_release, load_room
from .transforms import (PackPointInputs, PointColorDrop, PointGridSample, PointJitter,
                         PointNormalize, PointRandomCrop, PointRandomRotateZ, PointRandomScale,
                         PointVoteSubsets)

__all__ = [
    'ops', 'CLASSES', 'S3DISDataset', 'load_room', 'convert_raw_release', 'PointGridSample',
    'PointVoteSubsets', 'PointNormalize', 'PointRandomRotateZ', 'PointRandomScale', 'PointJitter',
    'PointColorDrop', 'PointRandomCrop', 'PackPointInputs', 'PointTokenizer', 'Pix4PointSegmentor',
    'PlainViT', 'synthetic_point_batch', 'points_benchmark_inputs', 'points_training_loss',
    'PointSegMetric'
]
