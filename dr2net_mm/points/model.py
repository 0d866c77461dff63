"""Deprecated module name, kept so that old imports work: the segmentor is in
:mod:`dr2net_mm.points.segmentor`, ``PlainViT`` in :mod:`dr2net_mm.models.plain_vit`, the benchmark
inputs in :mod:`dr2net_mm.benchmark`. Nothing in the package imports this module."""
from ..benchmark import points_benchmark_inputs, points_training_loss, synthetic_point_batch
from ..models.plain_vit import PlainViT
from .segmentor import Pix4PointSegmentor, PointTokenizer

__all__ = ['PointTokenizer', 'Pix4PointSegmentor', 'PlainViT', 'synthetic_point_batch',
           'points_benchmark_inputs', 'points_training_loss']
