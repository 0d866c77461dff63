"""Memory and time of a training step, measured the same way for every variant of a model.

* :mod:`.measure`: :class:`Variant`, :func:`measure`, :func:`compare`, :func:`markdown_table`;
* :mod:`.batches`: synthetic training batches (images, mmdet, mmseg, point crops);
* :mod:`.variants`: the variants compared (bare backbones; whole mm models from configs);
* :mod:`.saved_bytes`: the saved-bytes table of a ViT-S/16 backbone alone (a CLI).

``tools/benchmark.py`` is the command line over these.
"""
from .batches import detector_batch, image_batch, segmentor_batch, synthetic_point_batch
from .measure import MB, Measurement, Variant, _cpu_peak_bytes, compare, markdown_table, measure
from .variants import (build_model, detector_variants, mm_model_variants, points_variants,
                       segmentor_variants, swap_backbone, swin3d_variants, swin_variants,
                       training_loss, video_vit_variants, vit_variants)

__all__ = [
    'MB', 'Variant', 'Measurement', 'measure', 'compare', 'markdown_table', 'image_batch',
    'detector_batch', 'segmentor_batch', 'synthetic_point_batch', 'build_model', 'training_loss',
    'mm_model_variants', 'swin_variants', 'swin3d_variants', 'vit_variants', 'video_vit_variants',
    'detector_variants',
    'segmentor_variants', 'points_variants', 'swap_backbone'
]
