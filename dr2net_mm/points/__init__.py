"""Point-cloud semantic segmentation (Pix4Point-style) on S3DIS with a Dr²Net ViT.

Importing this package registers, in MMEngine's root registries: ``S3DISDataset`` (DATASETS), the
point transforms (TRANSFORMS), ``Pix4PointSegmentor`` (MODELS) and ``PointSegMetric`` (METRICS).
Its backbones, ``Dr2NetViT`` and the ``PlainViT`` baseline, are in :mod:`dr2net_mm.models`. See
docs/s3dis.md and configs/pix4point_*.py.
"""
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
    'PointSegMetric'
]

