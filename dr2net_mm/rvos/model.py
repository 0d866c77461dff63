"""An MTTR-style referring video object segmentor (Botach et al., CVPR 2022) on MMEngine::

    clip (B, 3, T, H, W) --Video Swin--> stages (B, C_i, T', H_i, W_i), i = 0..3
    sentence --RoBERTa--> text features (B, L, C_text)
    per frame: last stage + text --multimodal transformer--> N query embeddings, encoded vision map
    per frame: FPN(encoded map, stages 0..2) . query kernels --> N mask logits (H/4, W/4)
    per frame: query embeddings --linear--> referred / not-referred logits

The backbone is mmaction2's ``SwinTransformer3D`` or :class:`~dr2net_mm.models.Dr2NetSwin3D` with
``out_indices=(0, 1, 2, 3)`` (MTTR: a temporal patch size of 1, so ``T' = T``). Training supervises
the clip's annotated frame (its feature step ``clip_index·T'/T``) with
:class:`~dr2net_mm.rvos.head.ReferringCriterion`. Prediction (MTTR's): a query's referred score
is its "referred" probability averaged over the frames; every query's mask on the annotated frame,
upsampled to the video's size and thresholded, is a detection with that score (for mAP), the best
one the sample's answer (for IoU).

``freeze_backbone=True``: the paper's frozen-backbone row (no gradients, eval mode, ``no_grad``).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmaction.registry import MODELS
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import Tensor, nn

from .head import FPNMaskDecoder, MultimodalTransformer, ReferringCriterion
from .text import RobertaTextEncoder

__all__ = ['ReferringVideoSegmentor']


@MODELS.register_module()
class ReferringVideoSegmentor(BaseModel):
    """Video Swin + RoBERTa + multimodal transformer + FPN mask decoder (module doc).

    Args:
        backbone: an mmaction2 Video Swin config with ``out_indices=(0, 1, 2, 3)``.
        text_encoder: :class:`~dr2net_mm.rvos.text.RobertaTextEncoder` arguments.
        transformer: :class:`~dr2net_mm.rvos.head.MultimodalTransformer` arguments but the
            channels (taken from the backbone and the text encoder).
        mask_decoder: :class:`~dr2net_mm.rvos.head.FPNMaskDecoder` arguments but the channels.
        criterion: :class:`~dr2net_mm.rvos.head.ReferringCriterion` arguments.
        test_cfg: ``mask_thr`` (0.5), the threshold of the mask probabilities.
    """

    def __init__(self, backbone: dict, text_encoder: dict, transformer: Optional[dict] = None,
                 mask_decoder: Optional[dict] = None, criterion: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, freeze_backbone: bool = False,
                 test_cfg: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        channels = self._stage_channels(self.backbone)
        text_encoder = dict(text_encoder)
        text_encoder.pop('type', None)
        self.text_encoder = RobertaTextEncoder(**text_encoder)
        self.transformer = MultimodalTransformer(channels[-1], self.text_encoder.hidden_size,
                                                 **(transformer or {}))
        self.mask_decoder = FPNMaskDecoder(channels[:-1], self.transformer.embed_dims,
                                           **(mask_decoder or {}))
        self.referred_head = nn.Linear(self.transformer.embed_dims, 2)
        self.criterion = ReferringCriterion(**(criterion or {}))
        test_cfg = dict(test_cfg or {})
        self.mask_thr = float(test_cfg.pop('mask_thr', 0.5))
        if test_cfg:
            raise ValueError(f'test_cfg has unknown keys {sorted(test_cfg)}; it takes mask_thr')
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @staticmethod
    def _stage_channels(backbone: nn.Module) -> List[int]:
        out = tuple(getattr(backbone, 'out_indices', ()))
        num_layers = getattr(backbone, 'num_layers', None)
        if num_layers is None or not hasattr(backbone, 'embed_dims'):
            raise ValueError(f'ReferringVideoSegmentor needs a Video Swin backbone '
                             f'(SwinTransformer3D, Dr2NetSwin3D), got {type(backbone).__name__}')
        if out != tuple(range(num_layers)):
            raise ValueError(f'the backbone must return every stage: set out_indices='
                             f'{tuple(range(num_layers))}, got {out}')
        return [backbone.embed_dims * 2 ** i for i in range(num_layers)]

    def train(self, mode: bool = True) -> 'ReferringVideoSegmentor':
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------------------ forward
    def _clip(self, inputs: Tensor) -> Tensor:
        if inputs.dim() == 6:
            if inputs.shape[1] != 1:
                raise ValueError(f'ReferringVideoSegmentor takes one clip per sample, got inputs '
                                 f'of shape {tuple(inputs.shape)}')
            inputs = inputs[:, 0]
        return inputs

    def _forward(self, inputs: Tensor, sentences: Sequence[str]) -> Dict[str, Tensor]:
        x = self._clip(inputs)
        if len(sentences) != x.shape[0]:
            raise ValueError(f'{len(sentences)} sentences for {x.shape[0]} clips')
        if self.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        B, _, T = feats[0].shape[:3]
        per_frame = [f.transpose(1, 2).flatten(0, 1) for f in feats]  # (B·T', C_i, H_i, W_i)
        text, padding = self.text_encoder(sentences)
        queries, memory = self.transformer(per_frame[-1], text, padding, T)
        masks = self.mask_decoder(queries, memory, per_frame[:-1])
        logits = self.referred_head(queries)
        return dict(referred_logits=logits.unflatten(0, (B, T)),
                    mask_logits=masks.unflatten(0, (B, T)))

    @staticmethod
    def _sentences(data_samples: Optional[Sequence]) -> List[str]:
        if not data_samples:
            raise ValueError('ReferringVideoSegmentor needs data samples carrying the sentences '
                             '(metainfo "sentence")')
        return [s.metainfo['sentence'] for s in data_samples]

    @staticmethod
    def _annotated_step(sample, frames: int, steps: int) -> int:
        return int(sample.metainfo.get('clip_index', frames // 2)) * steps // frames

    def forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], list]:
        out = self._forward(inputs, self._sentences(data_samples))
        if mode == 'tensor':
            return out
        frames = self._clip(inputs).shape[2]
        steps = out['mask_logits'].shape[1]
        index = torch.tensor([self._annotated_step(s, frames, steps) for s in data_samples],
                             device=inputs.device)
        batch = torch.arange(len(data_samples), device=inputs.device)
        masks = out['mask_logits'][batch, index]  # (B, N, H/4, W/4)
        if mode == 'loss':
            size = data_samples[0].gt_instances.masks.shape[-2:]
            masks = F.interpolate(masks, size=size, mode='bilinear', align_corners=False)
            return self.criterion(out['referred_logits'][batch, index], masks,
                                  [s.gt_instances.masks for s in data_samples],
                                  [s.gt_instances.referred for s in data_samples])
        if mode == 'predict':
            scores = out['referred_logits'].softmax(-1)[..., 0].mean(1)  # (B, N)
            for b, sample in enumerate(data_samples):
                size = tuple(sample.metainfo.get('ori_shape', masks.shape[-2:]))
                probs = F.interpolate(masks[b:b + 1], size=size, mode='bilinear',
                                      align_corners=False)[0].sigmoid()
                sample.pred_instances = InstanceData(masks=probs > self.mask_thr,
                                                     scores=scores[b])
            return list(data_samples)
        raise RuntimeError(f'invalid mode {mode!r}: use "tensor", "loss" or "predict"')
