"""The temporal-action-detection benchmark: whole training steps of the four ActivityNet TAD configs
(conventional, ``with_cp`` = checkpointing, Dr²Net, frozen backbone) on synthetic long clips, one
setting per clip length (``tools/benchmark.py tad --frames 64 128 ...``).

Each variant is the config's whole detector (:func:`~dr2net_mm.benchmark.variants.build_model`:
random weights, pretrained loading off), trained on a batch of ``batch`` uint8 clips of ``frames``
frames of ``size``² with two ground-truth segments each, through the data preprocessor and the
``'loss'`` mode (:func:`~dr2net_mm.benchmark.variants.mm_model_variants`). The memory figures are
:mod:`~dr2net_mm.benchmark.measure`'s.
"""
import os
from typing import Dict, List

import torch

from .measure import Variant
from .variants import mm_model_variants

__all__ = ['TAD_CONFIGS', 'tad_batch', 'tad_variants']

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAD_CONFIGS = {
    'conventional': 'configs/tad_swin_t_anet.py',
    'checkpointing': 'configs/tad_swin_t_cp_anet.py',
    'dr2net': 'configs/tad_dr2net_swin_t_anet.py',
    'frozen': 'configs/tad_swin_t_frozen_anet.py',
}


def tad_batch(batch: int, frames: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """A synthetic TAD training batch as the dataloader gives it: ``inputs`` ``(1, 3, T, H, W)``
    uint8 per video, ``data_samples`` with two ground-truth segments (normalised time) each."""
    from mmaction.structures import ActionDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (1, 3, frames, size, size), dtype=torch.uint8,
                                    generator=gen))
        sample = ActionDataSample(metainfo=dict(duration=float(frames), video_name='synthetic'))
        sample.gt_instances = InstanceData(
            segments=torch.tensor([[0.1, 0.3], [0.5, 0.9]]),
            labels=torch.randint(0, num_classes, (2, ), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def tad_variants(frames: int, size: int, batch: int = 1,
                 configs: Dict[str, str] = TAD_CONFIGS) -> List[Variant]:
    """The detectors of ``configs`` (name -> path relative to the repository) on clips of
    ``frames`` × ``size``² (see the module doc)."""
    paths = {name: os.path.join(ROOT, path) for name, path in configs.items()}
    return mm_model_variants(
        paths, lambda model: tad_batch(batch, frames, size, model.head.num_classes), 'mmaction')
