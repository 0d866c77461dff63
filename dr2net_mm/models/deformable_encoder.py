"""Dr2NetDeformableEncoder: the Deformable-DETR / DINO transformer encoder as one Dr²Net stage.

mmdet's ``DeformableDetrTransformerEncoder`` runs ``num_layers`` post-norm layers, each two residual
sub-layers on the multi-scale tokens ``x`` ``(B, N, C)``::

    x ↦ LN_0(x + A(x))     A: multi-scale deformable self-attention (mmcv's module adds x itself)
    x ↦ LN_1(x + M(x))     M: the FFN (mmcv's FFN adds x itself)

A post-norm sub-layer ``x ↦ LN(x + G(x))`` is the residual step ``x ↦ x + F(x)`` with the branch

    F(x) = LN(x + G(x)) − x

so the ``2·num_layers`` sub-layers are the branches ``F_1..F_{2L}`` of one reversible stage (Eq. 1,
:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`). At (α, β) = (1, 0) Eq. 1 is
``x_i = x_{i-1} + F_i(x_{i-1}) = LN(x + G(x))``, mmdet's layer; there the encoder runs mmdet's own
loop (``x = layer(x)``), bit for bit mmdet's encoder (the stage would round ``(LN − x) + x`` once
more).

The attention branch takes the stage's extra arguments ``(query_pos, reference_points,
spatial_shapes, level_start_index, key_padding_mask)``; ``query_pos`` (sine encoding + DINO's
learnable level embedding) is a side input whose gradient the stage accumulates over its backward,
the others are constants. The branches hold references to the layers' submodules and the stage
registers none of them: the state dict is mmdet's (``layers.N.*``) plus the ``alpha``/``beta``
buffers, which an mmdet checkpoint need not have.

Recomputation part by part (``dr2net_mm.core.chunks``): deformable attention samples the projected
values at a few points per query, so once ``value = value_proj(x)`` is computed over all tokens (the
prologue), query rows are independent: sampling offsets, weights, sampling, output projection and
the norm run on runs of query rows. The FFN runs on runs of token rows.
"""
from typing import Any, List, Optional

import torch
from mmcv.ops import MultiScaleDeformableAttention, multi_scale_deform_attn
from mmdet.models.layers.transformer import (DeformableDetrTransformerEncoder,
                                             DeformableDetrTransformerEncoderLayer)
from mmdet.models.layers.transformer.detr_layers import DetrTransformerEncoderLayer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..branches import branch_sequence, token_plan
from ..core import ReversibleSequence
from ..core import chunks
from ..core.chunks import BranchPlan, draws_random, row_parts
from .backbone import Dr2NetBackboneMixin
from .pretrained import unwrap_state_dict

__all__ = ['Dr2NetDeformableEncoder', 'DeformableAttentionBranch', 'DeformableFFNBranch',
           'check_deformable_encoder']


def check_deformable_encoder(encoder: nn.Module, what: str, own_forward: bool = False) -> None:
    """ValueError naming the types unless ``encoder`` is mmdet's Deformable-DETR encoder: its
    forward (unless ``own_forward``), post-norm ``DetrTransformerEncoderLayer`` layers (not
    wrapped) with mmcv's multi-scale deformable self-attention. ``what`` names the requested
    feature."""
    layers = getattr(encoder, 'layers', None)
    odd = [] if isinstance(layers, nn.ModuleList) else [f'layers={type(layers).__name__}']
    for layer in layers if not odd else ():
        attn = type(getattr(layer, 'self_attn', None))
        if type(layer).forward is not DetrTransformerEncoderLayer.forward or \
                not issubclass(attn, MultiScaleDeformableAttention):
            odd.append(f'{type(layer).__name__} layers with self_attn {attn.__name__}')
    deformable = isinstance(encoder, DeformableDetrTransformerEncoder) and (
        own_forward or type(encoder).forward is DeformableDetrTransformerEncoder.forward)
    if not deformable or odd:
        raise ValueError(
            f'{what} needs a Deformable-DETR encoder (mmdet DeformableDetrTransformerEncoder with '
            f'DeformableDetrTransformerEncoderLayer layers: post-norm, '
            f'MultiScaleDeformableAttention); '
            f'got {type(encoder).__name__}{" with " + ", ".join(sorted(set(odd))) if odd else ""}. '
            "Use encoder=dict(mode='plain') for this detector, or a Deformable-DETR family "
            'detector (DINO, Deformable DETR).')


# ------------------------------------------------------------------------------------------------
# Deformable attention on query rows
# ------------------------------------------------------------------------------------------------
def project_value(attn: MultiScaleDeformableAttention, x: Tensor,
                  key_padding_mask: Optional[Tensor]) -> Tensor:
    """mmcv's value path: ``value_proj(x)``, padded tokens zeroed, split into heads
    ``(B, N, heads, C_v / heads)``."""
    value = attn.value_proj(x)
    if key_padding_mask is not None:
        value = value.masked_fill(key_padding_mask[..., None], 0.0)
    return value.view(x.shape[0], x.shape[1], attn.num_heads, -1)


def sample_rows(attn: MultiScaleDeformableAttention, query: Tensor, value: Tensor,
                reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor) -> Tensor:
    """mmcv's query path for some query rows: ``query`` ``(B, n, C)`` (with its position added),
    ``reference_points`` ``(B, n, levels, 2)``; returns ``output_proj`` of the sampled values
    ``(B, n, C)``, as ``MultiScaleDeformableAttention.forward`` computes it (the kernel on CUDA, the
    PyTorch path elsewhere)."""
    B, n, _ = query.shape
    heads, levels, points = attn.num_heads, attn.num_levels, attn.num_points
    offsets = attn.sampling_offsets(query).view(B, n, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(B, n, heads, levels * points)
    weights = weights.softmax(-1).view(B, n, heads, levels, points)
    normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
    locations = reference_points[:, :, None, :, None, :] \
        + offsets / normalizer[None, None, None, :, None, :]
    if multi_scale_deform_attn.IS_CUDA_AVAILABLE and value.is_cuda:
        output = multi_scale_deform_attn.MultiScaleDeformableAttnFunction.apply(
            value, spatial_shapes, level_start_index, locations, weights, attn.im2col_step)
    else:
        output = multi_scale_deform_attn.multi_scale_deformable_attn_pytorch(
            value, spatial_shapes, locations, weights)
    return attn.output_proj(output)


# NOTE [ Deformable parts per image ]
#
# Every part samples the projected values of the whole batch: mmcv's PyTorch path lays out all of
# them for ``grid_sample`` (a copy), and the backward of a part writes a gradient the size of all of
# them (zeros, then the sampled points), which the parts add up. That is work in proportion to the
# batch's tokens, once per part. Were parts sized by the sampled values of the whole batch, their
# count would also grow with the batch and this overhead with its square: DINO-4scale Swin-T at
# 800×1333, the reversible encoder took as long as every-layer checkpointing at batch 1 (1.00×)
# but 1.58× at batch 2 (``tools/step_time.py dino --size 800x1333 --batch 2``). Sized by one
# image's sampled values, a part holds ``B`` times more rows of transient, like every activation
# of the step, and the overhead stays the same share of the step at any batch: 1.07× at batch 2.


class _SharedValue:
    """The projected values during a by-parts backward: every part samples ``leaf`` (a detached
    copy that requires grad), whose gradient sums over the parts; :class:`_QueryRows` hands it to
    the graph of ``value`` when the engine back-propagates into the prologue, after the last
    part."""

    def __init__(self, value: Tensor):
        self.value = value
        self.leaf = value.detach().requires_grad_() if value.requires_grad else None


class _QueryRows(torch.autograd.Function):
    """The prologue's rows: ``x`` ``(B, N, C)`` as ``(N, B, C)``, tied to the projected values.
    Backward: ``dL/dx`` from the rows, and the values' gradient gathered by the parts."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, shared: _SharedValue) -> Tensor:
        ctx.shared = shared
        return x.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        leaf = ctx.shared.leaf
        return grad.transpose(0, 1), None if leaf is None else leaf.grad, None


# ------------------------------------------------------------------------------------------------
# The residual branches of an encoder layer
# ------------------------------------------------------------------------------------------------
class DeformableAttentionBranch(nn.Module):
    """``F(x) = norms[0](self_attn(x)) − x``: the attention sub-layer of a
    ``DeformableDetrTransformerEncoderLayer`` as a branch (mmcv's attention adds ``x`` itself).

    Called with the stage's extra arguments ``(query_pos, reference_points, spatial_shapes,
    level_start_index, key_padding_mask)``; ``x`` ``(B, N, C)`` -> ``(B, N, C)``."""

    def __init__(self, layer: DeformableDetrTransformerEncoderLayer):
        super().__init__()
        self.attn = layer.self_attn
        self.norm = layer.norms[0]

    def forward(self, x: Tensor, query_pos: Tensor, reference_points: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                key_padding_mask: Optional[Tensor]) -> Tensor:
        out = self.attn(query=x, value=x, query_pos=query_pos, key_padding_mask=key_padding_mask,
                        reference_points=reference_points, spatial_shapes=spatial_shapes,
                        level_start_index=level_start_index)
        return self.norm(out) - x

    def plan(self, x: Tensor, query_pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
             level_start_index: Tensor, key_padding_mask: Optional[Tensor]) -> Optional[BranchPlan]:
        """Runs of query rows (``dr2net_mm.core.chunks``): the prologue projects the values of all
        tokens; ``body`` samples them for a run of queries (rows of ``(N, B, C)``, all images) and
        applies the output projection, the residual add and the norm; ``merge`` transposes back.
        A part is sized by the sampled values of one image, ``levels·points·C`` per query, so a
        batch keeps one image's part count (NOTE [ Deformable parts per image ])."""
        attn = self.attn
        N, C = x.shape[1:]
        if draws_random(attn) or reference_points.shape[-1] != 2:
            return None
        parts = row_parts(N, attn.num_levels * attn.num_points * C, chunks.PART_ELEMENTS)
        if len(parts) == 1:
            return None
        shared = _SharedValue(project_value(attn, x, key_padding_mask))

        def body(rows: Tensor, part: slice) -> Tensor:
            # the engine's by-parts backward passes detached rows: sample the shared leaf, whose
            # gradient _QueryRows returns after the last part; otherwise (forward, reference mode)
            # the values with their graph
            by_parts = rows.requires_grad and rows.grad_fn is None and shared.leaf is not None
            value = shared.leaf if by_parts else shared.value
            q = rows.transpose(0, 1)
            out = sample_rows(attn, q + query_pos[:, part], value, reference_points[:, part],
                              spatial_shapes, level_start_index)
            return (self.norm(attn.dropout(out) + q) - q).transpose(0, 1)

        return BranchPlan(_QueryRows.apply(x, shared.value, shared), parts, body,
                          lambda out: out.transpose(0, 1))


class DeformableFFNBranch(nn.Module):
    """``F(x) = norms[1](ffn(x)) − x``: the FFN sub-layer of a
    ``DeformableDetrTransformerEncoderLayer`` as a branch (mmcv's FFN adds ``x`` itself); the
    stage's extra arguments are accepted and unused.

    The FFN's in-place activations (DINO's ``ReLU(inplace=True)``) are made out of place, the same
    values: in the reversible backward a linear layer's output may be a view that autograd refuses
    to modify in place (``dr2net_mm.core.param_grads``)."""

    def __init__(self, layer: DeformableDetrTransformerEncoderLayer):
        super().__init__()
        self.ffn = layer.ffn
        self.norm = layer.norms[1]
        for module in self.ffn.modules():
            if getattr(module, 'inplace', False) is True:
                module.inplace = False

    def branch(self, x: Tensor) -> Tensor:
        return self.norm(self.ffn(x)) - x

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        return self.branch(x)

    def plan(self, x: Tensor, *args: Any) -> Optional[BranchPlan]:
        """Runs of token rows (the FFN and the norm act on each token alone)."""
        if draws_random(self.ffn):
            return None
        return token_plan(x, self.ffn.feedforward_channels, self.branch, lambda out: out)


# ------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------
def _detect_format(state_dict) -> str:
    return 'mmdet encoder'


def _filter_checkpoint(checkpoint, model, prefix=None, logger=None):
    """An encoder state dict from an encoder checkpoint or, by prefix ``encoder.``, a detector's."""
    state_dict = unwrap_state_dict(checkpoint, prefix)
    if prefix is None and any(k.startswith('encoder.') for k in state_dict):
        state_dict = {k[len('encoder.'):]: v for k, v in state_dict.items()
                      if k.startswith('encoder.')}
    return state_dict


@MODELS.register_module()
class Dr2NetDeformableEncoder(Dr2NetBackboneMixin, DeformableDetrTransformerEncoder):
    """mmdet's ``DeformableDetrTransformerEncoder`` run as one reversible dual-residual stage over
    its ``2·num_layers`` post-norm sub-layers (module docstring): same arguments, submodules,
    state-dict keys (plus ``alpha``/``beta``), inputs and output ``(B, N, C)``.

    Args: mmdet's (``num_cp`` must stay ≤ 0: mmdet checkpoints through fairscale's reentrant
    wrapper, which a reversible stage has no use for), then the Dr²Net arguments ``alpha``,
    ``beta``, ``reversible``, ``stream_dtype``, ``segment_size``
    (:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`).
    """

    detect_format = staticmethod(_detect_format)
    filter_checkpoint = staticmethod(_filter_checkpoint)
    scratch_init = BaseModule.init_weights  # the detector initialises the encoder (DINO: xavier)

    def __init__(self, num_layers: int, layer_cfg: dict, num_cp: int = -1, init_cfg=None, *,
                 alpha: float = 1.0, beta: float = 0.1, reversible: bool = True,
                 stream_dtype='exact', segment_size: Optional[int] = None):
        args = self._check_arguments(alpha, beta, reversible, stream_dtype, segment_size,
                                     init_cfg=init_cfg)
        if num_cp is not None and num_cp > 0:
            raise ValueError(f'num_cp={num_cp}: mmdet checkpoints encoder layers with fairscale\'s '
                             'reentrant wrapper; a reversible encoder keeps no per-layer '
                             'activations. Leave num_cp=-1 (or use the checkpointed encoder, '
                             "encoder=dict(mode='checkpoint') of Dr2NetDINO)")
        super().__init__(num_layers=num_layers, layer_cfg=layer_cfg, num_cp=-1,
                         init_cfg=args.init_cfg)
        check_deformable_encoder(self, type(self).__name__, own_forward=True)
        self.sequence = branch_sequence(self.layers,
                                        (DeformableAttentionBranch, DeformableFFNBranch),
                                        args.stage)
        self._register_dr2net()

    @property
    def sequences(self) -> List[ReversibleSequence]:
        return [self.sequence]

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Optional[Tensor],
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                **kwargs) -> Tensor:
        """mmdet's encoder interface: ``query`` ``(B, N, C)`` (the flattened multi-scale features),
        ``query_pos`` ``(B, N, C)``, ``key_padding_mask`` ``(B, N)`` (True: padding),
        ``spatial_shapes`` ``(levels, 2)``, ``level_start_index`` ``(levels,)``, ``valid_ratios``
        ``(B, levels, 2)``; returns the memory ``(B, N, C)``."""
        if kwargs:
            raise TypeError(f'{type(self).__name__} passes no extra arguments to its layers; got '
                            f'{sorted(kwargs)}')
        self._sync_coefficients()
        if self._coefficients == (1.0, 0.0):  # Eq. 1 is mmdet's layer: run mmdet's loop
            return super().forward(query, query_pos, key_padding_mask, spatial_shapes,
                                   level_start_index, valid_ratios)
        reference_points = self.get_encoder_reference_points(spatial_shapes, valid_ratios,
                                                             device=query.device)
        return self.sequence(query, query_pos, reference_points, spatial_shapes,
                             level_start_index, key_padding_mask)

    def extra_repr(self) -> str:
        alpha, beta = self._coefficients
        return (f'alpha={alpha:g}, beta={beta:g}, reversible={self.reversible}, '
                f'stream_dtype={self.stream_dtype}')

