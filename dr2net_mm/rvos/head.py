"""MTTR's parts after the backbone: the multimodal transformer, the FPN-style mask decoder and the
Hungarian-matched losses, built from mmdet/mmcv pieces.

**Multimodal transformer** (:class:`MultimodalTransformer`). For every frame ``t`` of the clip
(after the backbone, ``T'`` of them): the last stage's map, projected to ``d`` channels and
flattened (``h·w`` tokens, 2D sine positions), is concatenated with the sentence's text features
(projected to ``d``, no positions; padding masked). A DETR encoder (mmdet's
``DetrTransformerEncoder``) mixes the two; a DETR decoder (``DetrTransformerDecoder``) runs ``N``
object queries, shared by all frames (MTTR's instance sequences), over that frame's multimodal
memory. Out: query embeddings ``(B·T', N, d)`` and the encoded vision tokens ``(B·T', d, h, w)``.

**Mask decoder** (:class:`FPNMaskDecoder`). An FPN over the encoded vision map (top) and the
backbone's earlier stages (1×1 laterals, 2× upsampling, 3×3 conv + GroupNorm + ReLU; the width
halves at every finer level, as MTTR's spatial decoder) gives mask features
``(B·T', m, H/4, W/4)``; each query's kernel (a 3-layer MLP of its embedding, ``m`` values) dotted
with them gives its mask logits (MTTR's dynamic kernels).

**Losses** (:class:`ReferringCriterion`), on the annotated frame of each clip. The targets are every
instance of that frame, labelled *referred* (class 0, the sentence's) or *not referred* (class 1).
mmdet's ``HungarianAssigner`` matches queries to them with MTTR's costs: ``2·ClassificationCost``
(``-softmax`` of the query's referred logits at the target's class), ``2·FocalLossCost`` on masks,
``5·DiceCost``. Then::

    loss_mask_focal = 2 · Σ_matched mean_pixels focal(m_q, m_k) / K      (sigmoid focal, 0.25, 2)
    loss_mask_dice  = 5 · Σ_matched (1 - (2 Σ p q + 1) / (Σ p + Σ q + 1)) / K
    loss_referred   = 2 · CE(referred logits of every query, class of its match or "not referred")
                      with weight 0.1 on "not referred" (DETR's no-object weight)

``K`` is the number of targets in the batch. MTTR also applies these to every decoder layer
(auxiliary losses); here only the last layer is supervised.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.layers import SinePositionalEncoding
from mmdet.models.layers.transformer import DetrTransformerDecoder, DetrTransformerEncoder
from mmdet.models.losses.dice_loss import dice_loss
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.registry import TASK_UTILS
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

__all__ = ['MultimodalTransformer', 'FPNMaskDecoder', 'ReferringCriterion']


def _layer_cfg(embed_dims: int, num_heads: int, ffn_dims: int, dropout: float, cross: bool):
    attn = dict(embed_dims=embed_dims, num_heads=num_heads, attn_drop=dropout, proj_drop=dropout,
                batch_first=True)
    cfg = dict(self_attn_cfg=attn, ffn_cfg=dict(
        embed_dims=embed_dims, feedforward_channels=ffn_dims, num_fcs=2, ffn_drop=dropout,
        act_cfg=dict(type='ReLU', inplace=True)))
    if cross:
        cfg['cross_attn_cfg'] = dict(attn)
    return cfg


class MultimodalTransformer(BaseModule):
    """Per-frame DETR encoder over vision + text tokens, then object queries (module doc).

    Args:
        vision_channels: channels of the backbone's last stage.
        text_channels: the text encoder's hidden size.
        embed_dims, num_heads, ffn_dims, dropout: the transformer's (MTTR: 256, 8, 2048, 0.1).
        num_queries: object queries per frame (MTTR: 50).
        num_encoder_layers, num_decoder_layers: MTTR: 3 and 3.
    """

    def __init__(self, vision_channels: int, text_channels: int, embed_dims: int = 256,
                 num_heads: int = 8, ffn_dims: int = 2048, dropout: float = 0.1,
                 num_queries: int = 50, num_encoder_layers: int = 3, num_decoder_layers: int = 3,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads or embed_dims % 2:
            raise ValueError(f'embed_dims={embed_dims} must be even and divisible by '
                             f'num_heads={num_heads}')
        self.embed_dims, self.num_queries = embed_dims, num_queries
        self.vision_proj = nn.Conv2d(vision_channels, embed_dims, 1)
        self.text_proj = nn.Sequential(nn.Linear(text_channels, embed_dims),
                                       nn.LayerNorm(embed_dims), nn.Dropout(dropout))
        self.positions = SinePositionalEncoding(num_feats=embed_dims // 2, normalize=True)
        self.encoder = DetrTransformerEncoder(
            num_encoder_layers, _layer_cfg(embed_dims, num_heads, ffn_dims, dropout, False))
        self.decoder = DetrTransformerDecoder(
            num_decoder_layers, _layer_cfg(embed_dims, num_heads, ffn_dims, dropout, True),
            return_intermediate=False)
        self.query_pos = nn.Embedding(num_queries, embed_dims)

    def forward(self, vision: Tensor, text: Tensor, text_padding: Tensor,
                frames: int) -> Tuple[Tensor, Tensor]:
        """``vision`` ``(B·T', C, h, w)``, ``text`` ``(B, L, C_text)``, ``text_padding``
        ``(B, L)`` bool -> ``(queries (B·T', N, d), vision memory (B·T', d, h, w))``."""
        bt, _, h, w = vision.shape
        v = self.vision_proj(vision)
        v_pos = self.positions(v.new_zeros((bt, h, w), dtype=torch.bool)).flatten(2).transpose(1, 2)
        v = v.flatten(2).transpose(1, 2)
        t = self.text_proj(text).repeat_interleave(frames, dim=0)
        t_pad = text_padding.repeat_interleave(frames, dim=0)
        tokens = torch.cat([v, t], dim=1)
        pos = torch.cat([v_pos, torch.zeros_like(t)], dim=1)
        padding = torch.cat([t_pad.new_zeros((bt, h * w)), t_pad], dim=1)
        memory = self.encoder(query=tokens, query_pos=pos, key_padding_mask=padding)
        query_pos = self.query_pos.weight[None].expand(bt, -1, -1)
        queries = self.decoder(query=torch.zeros_like(query_pos), key=memory, value=memory,
                               query_pos=query_pos, key_pos=pos, key_padding_mask=padding)[-1]
        vision_memory = memory[:, :h * w].transpose(1, 2).reshape(bt, self.embed_dims, h, w)
        return queries, vision_memory


class FPNMaskDecoder(BaseModule):
    """FPN over the encoded vision map and the backbone's earlier stages, and per-query dynamic
    mask kernels (module doc).

    Args:
        in_channels: channels of the backbone stages below the last, finest first.
        embed_dims: the transformer's width (the top of the FPN, the query embeddings).
        mask_dims: channels of the mask features (= kernel length).
        fpn_dims: the FPN's width at the top; it halves at every finer level.
        groups: GroupNorm groups of the 3×3 convolutions.
    """

    def __init__(self, in_channels: Sequence[int], embed_dims: int, mask_dims: int = 8,
                 fpn_dims: int = 256, groups: int = 8, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        levels = len(in_channels)
        dims = [fpn_dims // 2 ** k for k in range(levels + 1)]  # top, then finer and finer
        if dims[-1] < groups or any(d % groups for d in dims):
            raise ValueError(f'fpn_dims={fpn_dims} halves to {dims} over {levels} levels: each '
                             f'must be a multiple of groups={groups}')
        norm = dict(type='GN', num_groups=groups)
        self.top = ConvModule(embed_dims, dims[0], 3, padding=1, norm_cfg=norm)
        # laterals[i] / outputs[i]: stage i (finest first); stage i is reached after levels - i
        # halvings
        self.laterals = nn.ModuleList(nn.Conv2d(c, dims[levels - 1 - i], 1)
                                      for i, c in enumerate(in_channels))
        self.outputs = nn.ModuleList(ConvModule(dims[levels - 1 - i], dims[levels - i], 3,
                                                padding=1, norm_cfg=norm)
                                     for i in range(levels))
        self.project = nn.Conv2d(dims[-1], mask_dims, 1)
        self.kernel = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
                                    nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
                                    nn.Linear(embed_dims, mask_dims))

    def mask_features(self, vision_memory: Tensor, feats: Sequence[Tensor]) -> Tensor:
        """``(B·T', d, h, w)`` and the earlier stages ``[(B·T', C_i, H_i, W_i)]`` (finest first)
        -> ``(B·T', mask_dims, H_0, W_0)``."""
        x = self.top(vision_memory)
        for i in reversed(range(len(feats))):
            lateral = self.laterals[i](feats[i])
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode='nearest')
            x = self.outputs[i](x)
        return self.project(x)

    def forward(self, queries: Tensor, vision_memory: Tensor, feats: Sequence[Tensor]) -> Tensor:
        """Mask logits ``(B·T', N, H_0, W_0)``."""
        features = self.mask_features(vision_memory, feats)
        return torch.einsum('bnc,bchw->bnhw', self.kernel(queries), features)


class ReferringCriterion(nn.Module):
    """MTTR's Hungarian matching and losses on the annotated frames (module doc).

    Args:
        referred_weight, focal_weight, dice_weight: loss and cost weights (MTTR: 2, 2, 5).
        not_referred_weight: the class weight of "not referred" in the cross entropy (0.1).
    """

    def __init__(self, referred_weight: float = 2.0, focal_weight: float = 2.0,
                 dice_weight: float = 5.0, not_referred_weight: float = 0.1):
        super().__init__()
        self.weights = dict(referred=referred_weight, focal=focal_weight, dice=dice_weight)
        self.register_buffer('class_weight', torch.tensor([1.0, not_referred_weight]),
                             persistent=False)
        self.assigner = TASK_UTILS.build(dict(type='mmdet.HungarianAssigner', match_costs=[
            dict(type='mmdet.ClassificationCost', weight=referred_weight),
            dict(type='mmdet.FocalLossCost', weight=focal_weight, binary_input=True),
            dict(type='mmdet.DiceCost', weight=dice_weight, pred_act=True, eps=1.0)]))

    def match(self, logits: Tensor, masks: Tensor, gt_masks: Tensor,
              gt_labels: Tensor) -> Tuple[Tensor, Tensor]:
        """``(query indices, target indices)`` of the matched pairs of one clip: ``logits``
        ``(N, 2)``, ``masks`` ``(N, H, W)`` logits, ``gt_masks`` ``(K, H, W)``, ``gt_labels``
        ``(K,)``."""
        with torch.no_grad():
            result = self.assigner.assign(
                InstanceData(scores=logits.detach(), masks=masks.detach()),
                InstanceData(labels=gt_labels, masks=gt_masks))
        queries = torch.nonzero(result.gt_inds > 0).flatten()
        return queries, result.gt_inds[queries] - 1

    def forward(self, logits: Tensor, masks: Tensor, gt_masks: List[Tensor],
                gt_referred: List[Tensor]) -> dict:
        """``logits`` ``(B, N, 2)`` and ``masks`` ``(B, N, H, W)`` (logits) of the annotated frames;
        per clip ``gt_masks`` ``(K_b, H, W)`` bool and ``gt_referred`` ``(K_b,)`` bool."""
        total = max(sum(len(g) for g in gt_masks), 1)
        focal = dice = referred = logits.new_zeros(())
        for b in range(len(gt_masks)):
            labels = (~gt_referred[b]).long()  # 0 referred, 1 not referred
            target = gt_masks[b].to(masks.dtype)
            queries, targets = self.match(logits[b], masks[b], target, labels)
            classes = labels.new_ones(logits.shape[1])
            classes[queries] = labels[targets]
            referred = referred + F.cross_entropy(logits[b], classes, self.class_weight)
            if len(queries):
                pred, gt = masks[b, queries].flatten(1), target[targets].flatten(1)
                focal = focal + py_sigmoid_focal_loss(pred, gt, reduction='none').mean(1).sum()
                dice = dice + dice_loss(pred.sigmoid(), gt, eps=1.0, naive_dice=True,
                                        reduction='sum')
        return dict(loss_referred=self.weights['referred'] * referred / len(gt_masks),
                    loss_mask_focal=self.weights['focal'] * focal / total,
                    loss_mask_dice=self.weights['dice'] * dice / total)
