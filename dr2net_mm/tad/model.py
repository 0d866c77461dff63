"""Temporal action detection end to end: a video backbone over the whole clip, spatial pooling, an
ActionFormer-style head (:mod:`dr2net_mm.tad.head`, which says why that design).

The clip is the whole video resampled to T frames (:class:`~dr2net_mm.tad.data.DecodeWholeVideo`),
so the backbone sees the whole video at once, as in the paper's end-to-end setting::

    x (B, 3, T, H, W) --backbone--> (B, C, T', H', W') --mean over H', W'--> (B, C, T') --head--> ...

The backbone is any mmaction2 video backbone that returns NCTHW feature maps: mmaction2's
``SwinTransformer3D``, :class:`~dr2net_mm.models.Dr2NetSwin3D` (same weights, reversible),
``PlainVideoViT`` / ``Dr2NetVideoViT`` with ``return_feat_map=True``. A tuple of outputs uses the
last. ``freeze_backbone=True`` is the paper's "frozen backbone" row: the backbone's parameters get no
gradients, it stays in eval mode and runs under ``torch.no_grad()`` (no activations kept).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmaction.registry import MODELS
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor

from .head import ActionFormerHead

__all__ = ['TemporalActionDetector', 'ActionFormerHead']

MODELS.register_module(module=ActionFormerHead)


@MODELS.register_module()
class TemporalActionDetector(BaseModel):
    """Backbone → spatial mean → ActionFormer-style head (module doc).

    Args:
        backbone: config of an mmaction2 video backbone returning ``(B, C, T', H', W')``.
        head: config of the head (:class:`~dr2net_mm.tad.head.ActionFormerHead`).
        data_preprocessor: e.g. mmaction2's ``ActionDataPreprocessor`` with ``format_shape='NCTHW'``.
        freeze_backbone: the frozen-backbone baseline (module doc).

    Data samples carry ``gt_instances`` (``segments`` ``(N, 2)`` in normalised time, ``labels``) and
    the metainfo ``duration`` (seconds); predictions are ``pred_instances`` with ``segments`` in
    seconds, ``scores`` and ``labels``.
    """

    def __init__(self, backbone: dict, head: dict, data_preprocessor: Optional[dict] = None,
                 freeze_backbone: bool = False, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = MODELS.build(head)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> 'TemporalActionDetector':
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def extract_feat(self, inputs: Tensor) -> Tensor:
        """``(B, 1, 3, T, H, W)`` or ``(B, 3, T, H, W)`` -> temporal features ``(B, C, T')``."""
        if inputs.dim() == 6:
            if inputs.shape[1] != 1:
                raise ValueError(f'TemporalActionDetector takes one clip per video (the whole '
                                 f'video), got inputs of shape {tuple(inputs.shape)}; use '
                                 'FormatShape(input_format="NCTHW") on one clip')
            inputs = inputs[:, 0]
        if self.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(inputs)
        else:
            feats = self.backbone(inputs)
        if isinstance(feats, (tuple, list)):
            feats = feats[-1]
        if feats.dim() != 5:
            raise ValueError(f'the backbone returned a {feats.dim()}D tensor; '
                             'TemporalActionDetector needs NCTHW feature maps (Video ViT: set '
                             'return_feat_map=True)')
        return feats.mean(dim=(3, 4))

    def forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], list, tuple]:
        feats = self.extract_feat(inputs)
        if mode == 'tensor':
            return self.head(feats)
        if mode == 'loss':
            gts = [(s.gt_instances.segments, s.gt_instances.labels) for s in data_samples]
            return self.head.loss(feats, gts)
        if mode == 'predict':
            return self.add_predictions(self.head.predict(feats), data_samples)
        raise RuntimeError(f'invalid mode {mode!r}: use "tensor", "loss" or "predict"')

    @staticmethod
    def add_predictions(results: List[Dict[str, Tensor]], data_samples: Sequence) -> list:
        """Put each video's detections, scaled to seconds by its ``duration``, into its sample."""
        for result, sample in zip(results, data_samples):
            pred = InstanceData()
            pred.segments = result['segments'] * float(sample.metainfo['duration'])
            pred.scores = result['scores']
            pred.labels = result['labels']
            sample.pred_instances = pred
        return list(data_samples)
