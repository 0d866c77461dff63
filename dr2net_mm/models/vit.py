"""Dr2NetViT: reversible finetuning of a timm Vision Transformer (Dr²Net) for dense prediction and tokens.

A plain ViT is a chain of ``2·depth`` residual branches (every timm ``Block`` is an attention branch and
an MLP branch). Dr²Net (Zhao et al., CVPR 2024, Eq. 1) runs the whole chain as one reversible stage::

    x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

with, for block b = 0..depth-1 of timm 1.0 (``Block.forward`` is ``x = x + F_attn(x); x = x + F_mlp(x)``)::

    F_{2b+1}(x) = drop_path1(ls1(attn(norm1(x))))      # multi-head self-attention branch
    F_{2b+2}(x) = drop_path2(ls2(mlp(norm2(x))))       # MLP branch

so the output of block b is the stream ``x_{2(b+1)}``. At (α, β) = (1, 0) this is exactly timm's
``VisionTransformer``; for β > 0 every step is invertible, and in training the backward rebuilds every
activation of the blocks from the final streams instead of keeping them (see
:mod:`dr2net_mm.core.reversible`). Patch embedding, position embedding and the final norm are ordinary
layers outside the reversible stage. The parameters keep timm's names (``patch_embed.proj``,
``cls_token``, ``reg_token``, ``pos_embed``, ``blocks.N.*``, ``norm``), so timm checkpoints (plain ViT,
DeiT, MAE, DINOv2 with layer scale and registers, ...) load with no conversion; mmseg and mmpretrain
``VisionTransformer`` checkpoints are converted by :func:`checkpoint_filter_fn`.

Memory: bytes saved for backward by one training forward, ViT-S/16 (embed 384, 6 heads), batch 1 at
512×512 (1024 patch tokens + class token), float32 weights, (α, β) = (1, 0.1), float64 streams, one
segment; ``count_saved_bytes(model.parameters())`` (every storage once, parameters excluded)::

                                      12 blocks, out (11,)   12 blocks, out (3,5,7,11)   24 blocks
    timm forward_features (+ NCHW)         293.26 MiB
    timm, set_grad_checkpointing()          22.53 MiB
    Dr2NetViT                                9.01 MiB               9.01 MiB              9.01 MiB
      / timm, / timm checkpointing       3.07 %, 40.01 %        3.07 %, 40.01 %

Of the 9.01 MiB, 3.00 MiB is the input image, which the patch embedding convolution keeps for its
weight gradient (timm keeps it too; it is the caller's batch tensor, alive through the step anyway, and
it is kept as is, never a padded copy). The rest is the reversible stage's final streams: ``x_n`` as the
float32 output (shared with the final norm, which keeps that same tensor) plus a float32 remainder, and
``y_n`` in float64 -- 16 bytes per token and channel, independent of depth and of the number of outputs
(intermediate outputs come out of the same stage and are not kept). Activations without the input
image: 6.01 MiB against 19.53 MiB for timm's checkpointing (30.80 %) and 290.26 MiB for timm (2.07 %).
Each extra segment keeps one more stream pair (16 bytes per token and channel): segment_size 8 / 4 / 2
give 21.03 / 39.04 / 75.08 MiB. Measured with ``python -c 'from dr2net_mm.models.vit import main;
main()'`` (CPU, torch 2.14, timm 1.0.31).

Precision: the inverse amplifies rounding by roughly (‖J‖ + α)/β per branch, so long single segments
need care. Worst relative gradient error of the reversible backward against a float64 copy of the
model, randomly initialised ViT-S/16 with all 12 blocks (24 branches), drop path 0.1, float64 streams
(``dr2net_mm.core.gradient_error``; ordinary float32 autograd's own error, the floor, is 8e-7 to
9e-7)::

    (α, β)       segments              112², batch 2           224², batch 1
    (0.3, 0.7)   one (24 branches)     6.2e-6 (7.4x floor)     5.8e-6 (6.4x floor)
    (0.3, 0.7)   segment_size=8        <= 2x floor (tests/test_vit.py)
    (1, 0.1)     segment_size=4        8.0e-7 (1.01x floor)    8.1e-7 (1.00x floor)

Four blocks in one segment stay at the floor at (0.3, 0.7). Watch :meth:`reconstruction_errors` (the
engine's free monitor) and pick ``segment_size`` (in branches, two per block): each segment keeps one
more stream pair (16 bytes per token and channel, see Memory).
"""
import difflib
import logging
import re
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..core import ReversibleSequence, check_coefficients
from ..core.chunks import BranchPlan, draws_random, row_parts
from .common import (Dr2NetBackboneMixin, LoadReport, check_bool, check_segment_size,
                     parse_stream_dtype, pretrained_init_cfg, unwrap_state_dict)

__all__ = [
    'Dr2NetViT', 'ViTAttentionBranch', 'ViTMLPBranch', 'LoadReport', 'checkpoint_filter_fn',
    'detect_checkpoint_format', 'openmmlab_to_timm', 'unwrap_state_dict'
]


# timm VisionTransformer arguments that Dr2NetViT sets itself (with the Dr2NetViT argument to use).
_RESERVED_TIMM_KWARGS = {
    'num_classes': None, 'global_pool': None, 'pretrained': None, 'features_only': None,
    'img_size': 'img_size', 'patch_size': 'patch_size', 'in_chans': 'in_channels',
    'embed_dim': 'embed_dims', 'depth': 'depth', 'num_heads': 'num_heads', 'mlp_ratio': 'mlp_ratio',
    'drop_path_rate': 'drop_path_rate', 'final_norm': 'final_norm', 'dynamic_img_size': None,
    'dynamic_img_pad': 'dynamic_img_pad'
}
# Checkpoint keys of classifier heads, MAE decoders and other parts a backbone does not have.
_NON_BACKBONE = re.compile(r'^(head|head_dist|fc_norm|attn_pool|pre_logits|decoder\w*|mask_token|'
                           r'dist_token|head_drop)(\.|$)')


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})')
    if value < minimum:
        raise ValueError(f'{name}={value} must be >= {minimum}')
    return value


def _check_size(name: str, value: Any) -> Tuple[int, int]:
    size = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f'{name} must be a positive int or an (height, width) pair of them, got '
                         f'{value!r}')
    return int(size[0]), int(size[1])


def _normalize_indices(name: str, indices: Any, depth: int) -> Tuple[int, ...]:
    """Block indices (0-based, negative counts from the end) -> increasing tuple in [0, depth)."""
    raw = (indices, ) if isinstance(indices, int) and not isinstance(indices, bool) else indices
    if not isinstance(raw, (tuple, list)) or not raw or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise TypeError(f'{name} must be a block index or a non-empty sequence of block indices '
                        f'(ints), got {indices!r}')
    bad = [i for i in raw if not -depth <= i < depth]
    if bad:
        raise ValueError(f'{name}={indices!r}: block indices {bad} are out of range for depth={depth} '
                         f'(valid: 0..{depth - 1}, or -{depth}..-1 from the end)')
    normalized = tuple(i % depth for i in raw)
    if list(normalized) != sorted(set(normalized)):
        raise ValueError(f'{name}={indices!r} must name distinct blocks in increasing order (got '
                         f'blocks {normalized} after resolving negative indices)')
    return normalized


# ------------------------------------------------------------------------------------------------
# The residual branches of a timm Block, as engine functions
# ------------------------------------------------------------------------------------------------
class ViTAttentionBranch(nn.Module):
    """``F(x) = drop_path1(ls1(attn(norm1(x))))``: the attention branch of a timm ``Block`` without its
    residual add. ``x``: ``(B, N, C)`` tokens; ``attn_mask`` (optional) is passed to timm's
    ``Attention`` (``scaled_dot_product_attention`` semantics). Returns ``(B, N, C)``.

    Holds references to the block's submodules (their parameters keep their names in the backbone)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.ls1 = block.norm1, block.attn, block.ls1
        self.drop_path1 = block.drop_path1

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if attn_mask is None:
            out = self.attn(self.norm1(x))
        else:
            out = self.attn(self.norm1(x), attn_mask=attn_mask)
        return self.drop_path1(self.ls1(out))


class ViTMLPBranch(nn.Module):
    """``F(x) = drop_path2(ls2(mlp(norm2(x))))``: the MLP branch of a timm ``Block`` without its
    residual add. ``x``: ``(B, N, C)``; ``attn_mask`` is accepted and unused. Returns ``(B, N, C)``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm2, self.mlp, self.ls2 = block.norm2, block.mlp, block.ls2
        self.drop_path2 = block.drop_path2

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def plan(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Optional[BranchPlan]:
        """The branch token by token (see ``dr2net_mm.core.chunks``): ``body`` is norm, MLP and layer
        scale on rows of tokens, ``merge`` applies drop path per sample."""
        if draws_random(self.mlp):
            return None
        B, N, C = x.shape
        hidden = max(m.out_features for m in self.mlp.modules() if isinstance(m, nn.Linear))

        def body(h: Tensor, part: slice) -> Tensor:
            return self.ls2(self.mlp(self.norm2(h)))

        def merge(out: Tensor) -> Tensor:
            return self.drop_path2(out.view(B, N, C))

        return BranchPlan(x.reshape(B * N, C), row_parts(B * N, hidden), body, merge)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion: state dict in -> state dict out
# ------------------------------------------------------------------------------------------------
def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which ViT layout ``state_dict`` (prefixes already removed) is in:

    * ``'timm'``: timm's ``VisionTransformer`` (``blocks.N.attn.qkv``, ``patch_embed.proj``) -- also
      Dr2NetViT's own, and the official DeiT / MAE / DINOv2 releases that timm's filter understands;
    * ``'mmseg'``: mmseg's ``VisionTransformer`` (``layers.N.attn.attn.in_proj_weight``,
      ``layers.N.ffn.layers.0.0``, ``layers.N.ln1``, ``patch_embed.projection``, final norm ``ln1``);
    * ``'mmpretrain'``: mmpretrain's ``VisionTransformer`` (``layers.N.attn.qkv``, layer scale
      ``attn.gamma1.weight`` / ``ffn.gamma2.weight``, pre-norm ``pre_norm``, final norm ``ln1``).
    """
    keys = list(state_dict)
    if any(re.match(r'layers\.\d+\.attn\.attn\.in_proj_weight$', k) for k in keys):
        return 'mmseg'
    if any(re.match(r'layers\.\d+\.attn\.qkv\.', k) for k in keys):
        return 'mmpretrain'
    if any(re.match(r'blocks\.\d+\.', k) for k in keys):
        return 'timm'
    raise ValueError('the checkpoint does not look like a Vision Transformer (no blocks.N.* or '
                     f'layers.N.* keys); first keys: {keys[:8]}')


# mmseg / mmpretrain names inside ``layers.N.`` -> timm names inside ``blocks.N.``
_BLOCK_RENAMES = (
    ('ln1.', 'norm1.'), ('ln2.', 'norm2.'),
    ('attn.attn.in_proj_weight', 'attn.qkv.weight'), ('attn.attn.in_proj_bias', 'attn.qkv.bias'),
    ('attn.attn.out_proj.', 'attn.proj.'),  # mmseg (torch.nn.MultiheadAttention inside mmcv's)
    ('attn.qkv.', 'attn.qkv.'), ('attn.proj.', 'attn.proj.'),  # mmpretrain
    ('attn.gamma1.weight', 'ls1.gamma'), ('ffn.gamma2.weight', 'ls2.gamma'),  # layer scale
    ('ffn.layers.0.0.', 'mlp.fc1.'), ('ffn.layers.1.', 'mlp.fc2.'),
)
_TOP_RENAMES = (
    ('patch_embed.projection.', 'patch_embed.proj.'), ('ln1.', 'norm.'), ('ln_pre.', 'norm_pre.'),
    ('pre_norm.', 'norm_pre.'), ('ln2.', 'fc_norm.'),
)


def openmmlab_to_timm(state_dict: Mapping[str, Tensor], patch_bias: bool = True) -> Dict[str, Tensor]:
    """mmseg or mmpretrain ``VisionTransformer`` layout -> timm layout (names only, same tensors).

    ``torch.nn.MultiheadAttention``'s packed ``in_proj`` is q, k, v stacked in that order, the order of
    timm's ``qkv``, so the weights move over unchanged. mmseg builds its patch embedding without bias by
    default; with ``patch_bias`` a zero bias is added then (the same function as no bias). Both
    layouts keep a class-token entry at the front of ``pos_embed`` whenever they have a class token;
    :func:`checkpoint_filter_fn` fits that to the model."""
    out = OrderedDict()
    for key, value in state_dict.items():
        match = re.match(r'layers\.(\d+)\.(.*)$', key)
        if match:
            index, rest = match.groups()
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f'blocks.{index}.{rest}'] = value
            continue
        for old, new in _TOP_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    weight = out.get('patch_embed.proj.weight')
    if patch_bias and weight is not None and 'patch_embed.proj.bias' not in out:
        out['patch_embed.proj.bias'] = weight.new_zeros(weight.shape[0])
    return out


def _fit_prefix_positions(state_dict: Dict[str, Tensor], model: 'Dr2NetViT', source_prefix: int) -> None:
    """An OpenMMLab ``pos_embed`` with ``source_prefix`` (0 or 1, the class token) leading entries ->
    the model's layout (in place): folded into the class token for ``no_embed_class`` models, dropped
    for models without class token."""
    pos = state_dict.get('pos_embed')
    model_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if pos is None or model.pos_embed is None or source_prefix == model_prefix:
        return
    if source_prefix == 1 and model_prefix == 0:
        if model.has_class_token and 'cls_token' in state_dict:
            state_dict['cls_token'] = state_dict['cls_token'] + pos[:, :1]
        elif not model.has_class_token:
            state_dict.pop('cls_token', None)
        state_dict['pos_embed'] = pos[:, 1:]
        return
    raise ValueError(f'cannot fit a position embedding with {source_prefix} prefix entries to a model '
                     f'with {model_prefix} (class token: {model.has_class_token}, register tokens: '
                     f'{model.num_reg_tokens}, no_embed_class: {model.no_embed_class})')


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional['Dr2NetViT'] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported ViT checkpoint -> a state dict in Dr2NetViT's (= timm's) layout.

    Accepts timm state dicts (and the official releases timm converts: DeiT, MAE, DINOv2 with or
    without registers, ...), mmseg and mmpretrain ``VisionTransformer`` state dicts, and whole
    segmentor / classifier checkpoints (keys under ``backbone.``); see :func:`detect_checkpoint_format`.
    Classifier heads, MAE decoders and mask tokens are dropped. With ``model`` the tensors are also
    fitted to it with timm's own ``checkpoint_filter_fn``: the position embedding resampled to the
    model's patch grid, the patch kernel resampled to its patch size, a class-token position entry
    folded or dropped as the model needs, the final norm dropped when the model has none.
    """
    state_dict = unwrap_state_dict(checkpoint, prefix)
    fmt = detect_checkpoint_format(state_dict)
    if fmt in ('mmseg', 'mmpretrain'):
        has_bias = model is None or model.patch_embed.proj.bias is not None
        source_prefix = 1 if (fmt == 'mmseg' or 'cls_token' in state_dict) else 0
        state_dict = openmmlab_to_timm(state_dict, patch_bias=has_bias)
        if model is not None:
            _fit_prefix_positions(state_dict, model, source_prefix)
    if model is not None:
        from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter
        state_dict = timm_filter(dict(state_dict), model)  # DINOv2 / CLIP conversions, resampling
    dropped = [k for k in state_dict if _NON_BACKBONE.match(k)]
    if model is not None and model.norm is None:
        dropped += [k for k in state_dict if k.startswith('norm.')]
    if dropped:
        print_log(f'Dr2NetViT checkpoint filter: dropped {len(dropped)} keys of parts the backbone does '
                  f'not have ({sorted({k.split(".")[0] for k in dropped})})', logger=logger,
                  level=logging.INFO)
    dropped = set(dropped)
    return OrderedDict((k, v) for k, v in state_dict.items() if k not in dropped)


def _build_timm_vit(arch: Optional[str], kwargs: Dict[str, Any]) -> nn.Module:
    import timm
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer
    if arch is None:
        model = VisionTransformer(**kwargs)
    else:
        if not isinstance(arch, str):
            raise TypeError(f'arch must be a timm model name (str) or None, got {arch!r}')
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models('*vit*'), n=5, cutoff=0.6)
            hint = f'; did you mean one of {close}?' if close else ''
            raise ValueError(f"arch={arch!r} is not a timm model name (e.g. 'vit_small_patch16_224', "
                             f"'vit_small_patch14_reg4_dinov2'){hint}")
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except (AssertionError, TypeError, ValueError) as error:
            raise ValueError(f'timm could not build arch={arch!r} as a feature backbone with '
                             f'{kwargs}: {error}') from error
    name = arch or 'the explicit architecture'
    if not isinstance(model, VisionTransformer) or hasattr(model, 'dist_token'):
        raise ValueError(f'arch={name!r} builds a timm {type(model).__name__}; Dr2NetViT supports '
                         'timm VisionTransformer models (ViT, DeiT, MAE, DINOv2, ...), without a '
                         'distillation token')
    odd = sorted({type(b).__name__ for b in model.blocks if type(b).forward is not Block.forward})
    if odd:
        raise ValueError(f'arch={name!r} uses {odd} blocks; Dr2NetViT needs timm Block (pre-norm '
                         '"x + drop_path1(ls1(attn(norm1(x))))" then the MLP branch)')
    if type(model.patch_embed) is not PatchEmbed:
        raise ValueError(f'arch={name!r} embeds patches with a {type(model.patch_embed).__name__} (e.g. a '
                         'hybrid CNN stem); Dr2NetViT supports timm PatchEmbed')
    if not isinstance(model.patch_drop, nn.Identity):
        raise ValueError('patch dropout (patch_drop_rate > 0) drops tokens, so no dense feature map can '
                         'be formed; remove patch_drop_rate from timm_kwargs')
    return model


@MODELS.register_module()
class Dr2NetViT(Dr2NetBackboneMixin, BaseModule):
    """A timm Vision Transformer with its blocks run as one reversible dual-residual stage (Dr²Net).

    The ``2·depth`` residual branches of the blocks (:class:`ViTAttentionBranch`,
    :class:`ViTMLPBranch`) run as Eq. 1 of the paper::

        x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

    where ``x_0`` is the embedded token sequence (patch tokens plus class / register tokens plus
    position embedding, as timm) and the output of block ``b`` is ``x_{2(b+1)}``. With (α, β) = (1, 0)
    it computes timm's ViT exactly; the paper finetunes from (1, 0.1) towards e.g. (0.3, 0.7) (change
    them with :meth:`set_coefficients`, e.g. from ``AlphaBetaHook``).

    Input ``(B, in_channels, H, W)``, any size (not necessarily square or the pretraining size): the
    image is padded at the bottom/right to a multiple of the patch size (``dynamic_img_pad``) and the
    position embedding is resampled to the ``(h, w) = (ceil(H/p), ceil(W/p))`` patch grid with timm's
    ``resample_abs_pos_embed``. Output: a tuple with, for each block index in ``out_indices``, that
    block's patch tokens as a ``(B, embed_dims, h, w)`` map (prefix tokens dropped). All outputs come
    out of the same reversible stage, so asking for several costs no kept activations.

    ``final_norm``: timm's final ``norm`` is applied to the output of the *last* block (index
    ``depth-1``) only, when it is in ``out_indices`` -- timm's ``forward_features``, and what mmseg and
    mmpretrain do (their final norm overwrites the last layer's tokens); earlier outputs are raw block
    outputs. ``final_norm=False`` builds no final norm (its checkpoint keys are dropped on loading).

    Args:
        arch: a timm model name whose model is a ``VisionTransformer`` of timm ``Block``s (e.g.
            'vit_small_patch16_224', 'deit_small_patch16_224', 'vit_base_patch16_224.mae',
            'vit_small_patch14_reg4_dinov2'), or None for an architecture given by the explicit
            arguments below (then ``embed_dims``, ``depth``, ``num_heads`` are required).
        embed_dims, depth, num_heads, patch_size, mlp_ratio: the architecture; with ``arch`` they
            override its values (e.g. ``depth=2`` for a quick test); None keeps them.
        img_size: the pretraining input size, which fixes the ``pos_embed`` grid (None: the arch's, or
            224). Any input size works; this is only where the stored position embedding lives.
        in_channels: image channels.
        out_indices: block indices (0-based like mmseg; negative from the end) whose outputs are
            returned, increasing.
        final_norm: apply timm's final norm to the last block's output (see above).
        drop_path_rate: stochastic depth, linearly increasing over blocks (timm's rule).
        norm_eps: epsilon of every LayerNorm (None: timm's 1e-6; mmseg-trained weights used 1e-5).
        dynamic_img_pad: pad inputs to a multiple of the patch size (False: sizes must divide).
        pos_embed_interp, pos_embed_antialias: how the position embedding is resampled to other grids
            (timm: 'bicubic', antialias True; mmseg: 'bicubic', antialias False).
        timm_kwargs: more keyword arguments of timm's ``VisionTransformer`` (``qkv_bias``,
            ``init_values`` for layer scale, ``class_token``, ``reg_tokens``, ``no_embed_class``,
            ``pre_norm``, ``proj_drop_rate``, ``attn_drop_rate``, ``pos_drop_rate``, ...).
        alpha, beta: the Dr²Net coefficients in [0, 1] (β > 0 when ``reversible``). Kept in the model
            as persistent float64 buffers ``alpha``/``beta`` (so checkpoints carry them); loading a
            state dict sets the stage to the loaded values; a checkpoint without them (e.g. timm's)
            keeps the current values.
        reversible: True: in training with gradients the stage keeps only its final streams and
            rebuilds activations in backward (Eq. 2). False: ordinary autograd (the exact reference,
            also the mode for β = 0). In eval mode or under ``torch.no_grad()`` the forward is a plain
            loop either way.
        stream_dtype: dtype of the two streams in training: ``torch.float64`` (default) or
            ``torch.float32``; the names 'float64'/'float32' work too.
        segment_size: keep the streams every ``segment_size`` branches (two per block) to bound the
            reconstruction error of deep models, at one stream pair each (less where a segment ends at
            an output); None: one segment.
        init_cfg: None (timm's random initialisation) or ``dict(type='Pretrained', checkpoint=...,
            prefix=None)`` in any layout :func:`checkpoint_filter_fn` accepts.
        pretrained: deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``
            (mmseg segmentors pass it).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)

    def __init__(self,
                 arch: Optional[str] = 'vit_small_patch16_224',
                 embed_dims: Optional[int] = None,
                 depth: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 patch_size: Optional[int] = None,
                 mlp_ratio: Optional[float] = None,
                 img_size: Optional[Union[int, Sequence[int]]] = None,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 final_norm: bool = True,
                 drop_path_rate: float = 0.0,
                 norm_eps: Optional[float] = None,
                 dynamic_img_pad: bool = True,
                 pos_embed_interp: str = 'bicubic',
                 pos_embed_antialias: bool = True,
                 timm_kwargs: Optional[Dict[str, Any]] = None,
                 alpha: float = 1.0,
                 beta: float = 0.1,
                 reversible: bool = True,
                 stream_dtype: Union[torch.dtype, str] = torch.float64,
                 segment_size: Optional[int] = None,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        reversible = check_bool('reversible', reversible)
        alpha, beta = check_coefficients(alpha, beta, reversible)
        stream_dtype = parse_stream_dtype(stream_dtype)
        segment_size = check_segment_size(segment_size)
        final_norm = check_bool('final_norm', final_norm)
        dynamic_img_pad = check_bool('dynamic_img_pad', dynamic_img_pad)
        pos_embed_antialias = check_bool('pos_embed_antialias', pos_embed_antialias)
        if pos_embed_interp not in ('bicubic', 'bilinear', 'nearest'):
            raise ValueError(f"pos_embed_interp={pos_embed_interp!r} must be 'bicubic', 'bilinear' or "
                             "'nearest'")
        init_cfg = pretrained_init_cfg(pretrained, init_cfg)
        super().__init__(init_cfg=init_cfg)

        kwargs = self._timm_kwargs(arch, embed_dims, depth, num_heads, patch_size, mlp_ratio,
                                   img_size, in_channels, drop_path_rate, norm_eps, timm_kwargs)
        vit = _build_timm_vit(arch, kwargs)
        if final_norm and isinstance(vit.norm, nn.Identity):
            raise ValueError(f'final_norm=True but arch={arch!r} has no final norm (it normalises after '
                             'pooling, fc_norm); use final_norm=False')
        # timm's submodules under timm's names (state-dict compatible); the classifier is left behind.
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm if final_norm else None
        self.pretrained_cfg = dict(getattr(vit, 'pretrained_cfg', None) or {})  # for timm's filter
        self.arch = arch
        self.embed_dims = vit.embed_dim
        self.depth = len(vit.blocks)
        self.in_channels = in_channels
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.pos_embed_grid = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_reg_tokens = vit.num_reg_tokens
        self.has_class_token = vit.has_class_token
        self.no_embed_class = vit.no_embed_class
        self.final_norm = final_norm
        self.dynamic_img_pad = dynamic_img_pad
        self.pos_embed_interp = pos_embed_interp
        self.pos_embed_antialias = pos_embed_antialias
        self.out_indices = _normalize_indices('out_indices', out_indices, self.depth)

        functions: List[nn.Module] = []
        for block in self.blocks:
            functions += [ViTAttentionBranch(block), ViTMLPBranch(block)]
        self.engine = ReversibleSequence(functions, alpha=alpha, beta=beta, reversible=reversible,
                                         stream_dtype=stream_dtype, segment_size=segment_size,
                                         register_functions=False)
        self.register_buffer('alpha', torch.tensor(alpha, dtype=torch.float64))
        self.register_buffer('beta', torch.tensor(beta, dtype=torch.float64))
        self._coefficients = (alpha, beta)
        self._synced_buffers = self._buffer_versions()

    @staticmethod
    def _timm_kwargs(arch, embed_dims, depth, num_heads, patch_size, mlp_ratio, img_size,
                     in_channels, drop_path_rate, norm_eps, timm_kwargs) -> Dict[str, Any]:
        extra = dict(timm_kwargs or {})
        if not isinstance(timm_kwargs, (Mapping, type(None))):
            raise TypeError(f'timm_kwargs must be a dict or None, got {timm_kwargs!r}')
        reserved = {k: v for k, v in _RESERVED_TIMM_KWARGS.items() if k in extra}
        if reserved:
            hints = [f'{k} (use Dr2NetViT argument {v!r})' if v else f'{k} (set by Dr2NetViT)'
                     for k, v in reserved.items()]
            raise ValueError(f'timm_kwargs must not contain {hints}')
        if arch is None:
            missing = [n for n, v in (('embed_dims', embed_dims), ('depth', depth),
                                      ('num_heads', num_heads)) if v is None]
            if missing:
                raise ValueError(f'arch=None needs an explicit architecture: {missing} missing (or give '
                                 "a timm name, e.g. arch='vit_small_patch16_224')")
        kwargs: Dict[str, Any] = dict(num_classes=0, global_pool='')
        for name, timm_name, value in (('embed_dims', 'embed_dim', embed_dims), ('depth', 'depth', depth),
                                       ('num_heads', 'num_heads', num_heads),
                                       ('patch_size', 'patch_size', patch_size)):
            if value is not None:
                kwargs[timm_name] = _check_int(name, value)
        if embed_dims is not None and num_heads is not None and embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} is not divisible by num_heads={num_heads}')
        if mlp_ratio is not None:
            if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
                raise ValueError(f'mlp_ratio={mlp_ratio!r} must be a positive number')
            kwargs['mlp_ratio'] = float(mlp_ratio)
        if img_size is not None:
            kwargs['img_size'] = _check_size('img_size', img_size)
        elif arch is None:
            kwargs['img_size'] = 224
        kwargs['in_chans'] = _check_int('in_channels', in_channels)
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or \
                not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate={drop_path_rate!r} must be a number in [0, 1)')
        kwargs['drop_path_rate'] = float(drop_path_rate)
        if norm_eps is not None:
            if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or norm_eps <= 0:
                raise ValueError(f'norm_eps={norm_eps!r} must be a positive number')
            from timm.layers import LayerNorm
            kwargs['norm_layer'] = partial(LayerNorm, eps=float(norm_eps))
        kwargs.update(extra)
        return kwargs

    @property
    def engines(self) -> List[ReversibleSequence]:
        """The reversible stages (one: all blocks)."""
        return [self.engine]

    # --------------------------------------------------------------------------- state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # α/β may be absent (a timm / mmseg checkpoint): keep the current values then.
        coefficients = self._take_coefficients(state_dict, prefix, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if coefficients is not None:
            self._apply_coefficients(*coefficients)

    # --------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """Keep timm's random initialisation (``init_cfg=None``) or load ``init_cfg=dict(
        type='Pretrained', checkpoint=..., prefix=None)`` in any layout :func:`checkpoint_filter_fn`
        accepts."""
        cfg = self.init_cfg
        if cfg is not None:
            if not isinstance(cfg, Mapping) or cfg.get('type') != 'Pretrained' or \
                    'checkpoint' not in cfg:
                raise ValueError(f'{type(self).__name__} supports init_cfg=None or '
                                 f"dict(type='Pretrained', checkpoint=...), got {cfg!r}")
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                                 map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True

    def feature_size(self, height: int, width: int) -> Tuple[int, int]:
        """The patch grid ``(h, w)`` of an ``height × width`` input."""
        ph, pw = self.patch_size
        if self.dynamic_img_pad:
            return -(-height // ph), -(-width // pw)
        return height // ph, width // pw

    def resized_pos_embed(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The position embedding for a ``grid = (h, w)`` patch grid: ``(1, [prefix +] h·w, C)``, the
        stored one when the grid is the pretraining grid, else resampled (timm's
        ``resample_abs_pos_embed``; prefix entries, if any, unchanged)."""
        if self.pos_embed is None:
            return None
        if tuple(grid) == self.pos_embed_grid:
            return self.pos_embed
        from timm.layers import resample_abs_pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, new_size=list(grid), old_size=list(self.pos_embed_grid),
            num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            interpolation=self.pos_embed_interp, antialias=self.pos_embed_antialias)

    def _prefix(self, batch: int) -> List[Tensor]:
        tokens = []
        if self.cls_token is not None:
            tokens.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            tokens.append(self.reg_token.expand(batch, -1, -1))
        return tokens

    def _add_positions(self, x: Tensor, pos_embed: Optional[Tensor], prefix: bool) -> Tensor:
        """timm's ``_pos_embed`` (class / register tokens, position embedding, dropout) + ``norm_pre``."""
        to_cat = self._prefix(x.shape[0]) if prefix else []
        if pos_embed is None:
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        elif self.no_embed_class or pos_embed.shape[1] == x.shape[1]:
            x = x + pos_embed  # prefix tokens have no position entries
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        else:
            x = torch.cat(to_cat + [x], dim=1) + pos_embed
        if self.pos_drop.p > 0:
            x = self.pos_drop(x)
        return self.norm_pre(x)

    def embed(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Images ``(B, in_channels, H, W)`` -> ``x_0`` tokens ``(B, prefix + h·w, C)`` and ``(h, w)``.

        Pads only when ``H`` or ``W`` is not a multiple of the patch size, so the patch convolution
        keeps the caller's image tensor for its weight gradient rather than a copy of it."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f'expected images of shape (B, {self.in_channels}, H, W), got '
                             f'{tuple(images.shape)}')
        height, width = images.shape[-2:]
        ph, pw = self.patch_size
        pad_h, pad_w = (-height) % ph, (-width) % pw
        if pad_h or pad_w:
            if not self.dynamic_img_pad:
                raise ValueError(f'input size {height}x{width} is not a multiple of the patch size '
                                 f'{self.patch_size}; use dynamic_img_pad=True')
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = self.patch_embed.proj(images)  # (B, C, h, w)
        batch, channels, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))  # (B, h·w, C)
        return self._add_positions(x, self.resized_pos_embed((h, w)), prefix=True), (h, w)

    def _run_blocks(self, x: Tensor, out_indices: Tuple[int, ...],
                    attn_mask: Optional[Tensor]) -> List[Tensor]:
        args = () if attn_mask is None else (attn_mask, )
        outs = list(self.engine(x, *args, out_positions=[2 * (b + 1) for b in out_indices]))
        if self.norm is not None and out_indices[-1] == self.depth - 1:
            outs[-1] = self.norm(outs[-1])
        return outs

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        """``(B, in_channels, H, W)`` -> tuple of ``(B, embed_dims, h, w)`` maps, one per out index."""
        self._sync_coefficients()
        x, (h, w) = self.embed(images)
        outs = self._run_blocks(x, self.out_indices, None)
        return tuple(out[:, self.num_prefix_tokens:].reshape(out.shape[0], h, w, -1).permute(
            0, 3, 1, 2).contiguous() for out in outs)

    def forward_tokens(self, tokens: Tensor, pos_embed: Optional[Tensor] = None,
                       out_indices: Optional[Union[int, Sequence[int]]] = None,
                       attn_mask: Optional[Tensor] = None,
                       prefix_tokens: bool = False) -> Tuple[Tensor, ...]:
        """Run the reversible blocks on any tokens (point-cloud patches, ...).

        ``x_0 = norm_pre(tokens + pos_embed)`` (with ``prefix_tokens``: the class / register tokens are
        put in front first, with their position entries where the model has them), then Eq. 1 over all
        blocks; returns, for each block index in ``out_indices`` (default: the constructor's), that
        block's output ``(B, N, C)`` (prefix tokens dropped); the final norm applies to the last
        block's output as in :meth:`forward`.

        Args:
            tokens: ``(B, N, embed_dims)``.
            pos_embed: None or ``(B or 1, N, embed_dims)``, added to the tokens (may require grad).
            out_indices: block indices as in the constructor.
            attn_mask: passed to every attention (``scaled_dot_product_attention`` semantics, e.g. a
                boolean ``(B, 1, N', N')`` mask with ``N' = N`` [+ prefix]); a constant.
            prefix_tokens: prepend the model's class / register tokens.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.embed_dims:
            raise ValueError(f'tokens must have shape (B, N, {self.embed_dims}), got '
                             f'{tuple(tokens.shape)}')
        if pos_embed is not None and (pos_embed.dim() != 3 or pos_embed.shape[0] not in (
                1, tokens.shape[0]) or pos_embed.shape[1:] != tokens.shape[1:]):
            raise ValueError(f'pos_embed must have shape (B or 1, N, C) = ({tokens.shape[0]} or 1, '
                             f'{tokens.shape[1]}, {tokens.shape[2]}), got {tuple(pos_embed.shape)}')
        self._sync_coefficients()
        indices = self.out_indices if out_indices is None else _normalize_indices(
            'out_indices', out_indices, self.depth)
        x = tokens if pos_embed is None else tokens + pos_embed
        skip = 0
        if prefix_tokens and self.num_prefix_tokens:
            prefix = torch.cat(self._prefix(tokens.shape[0]), dim=1)
            if self.pos_embed is not None and not self.no_embed_class:
                prefix = prefix + self.pos_embed[:, :self.num_prefix_tokens]
            x, skip = torch.cat([prefix, x], dim=1), self.num_prefix_tokens
        x = self._add_positions(x, None, prefix=False)
        return tuple(out[:, skip:] for out in self._run_blocks(x, indices, attn_mask))

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer-wise learning-rate decay (mmpretrain's ``get_layer_depth`` protocol, used by its
        ``LearningRateDecayOptimWrapperConstructor``): ``(depth of the parameter, depth + 2)`` with the
        embeddings at 0, block ``b`` at ``b + 1`` and the final norm (and anything outside the backbone)
        at ``depth + 1``."""
        num_layers = self.depth + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name in ('cls_token', 'reg_token', 'pos_embed') or name.startswith(
                ('patch_embed.', 'norm_pre.')):
            return 0, num_layers
        match = re.match(r'blocks\.(\d+)\.', name)
        if match:
            return int(match.group(1)) + 1, num_layers
        return num_layers - 1, num_layers

    def extra_repr(self) -> str:
        return (f'arch={self.arch!r}, depth={self.depth}, embed_dims={self.embed_dims}, '
                f'out_indices={self.out_indices}, final_norm={self.final_norm}')


# ------------------------------------------------------------------------------------------------
# Memory measurement: python -c 'from dr2net_mm.models.vit import main; main()'
# ------------------------------------------------------------------------------------------------
def measure_saved_bytes(size: int = 512, depth: int = 12, out_indices: Sequence[int] = (11, ),
                        checkpointing: Optional[bool] = None, exclude_input: bool = False,
                        **kwargs) -> int:
    """Bytes saved for backward by one training forward of ViT-S/16 at ``size``², batch 1:
    ``checkpointing=None`` measures Dr2NetViT, False timm's ``forward_features`` (+ the NCHW reshape),
    True timm with ``set_grad_checkpointing()``. Parameters are excluded (and the input image with
    ``exclude_input``)."""
    import timm

    from ..core import count_saved_bytes
    torch.manual_seed(0)
    images = torch.randn(1, 3, size, size)
    if checkpointing is None:
        model = Dr2NetViT('vit_small_patch16_224', depth=depth, out_indices=out_indices,
                          **kwargs).train()
        run = model
    else:
        model = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0,
                                  global_pool='', depth=depth, dynamic_img_size=True).train()
        model.set_grad_checkpointing(checkpointing)

        def run(x):
            tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
            return tokens.reshape(1, size // 16, size // 16, -1).permute(0, 3, 1, 2).contiguous()
    exclude = list(model.parameters()) + ([images] if exclude_input else [])
    with count_saved_bytes(exclude) as saved:
        run(images)
    return saved.total


def main() -> None:
    """Print the memory table of the module documentation."""
    mib = 2.0**20
    for exclude_input in (False, True):
        plain = measure_saved_bytes(checkpointing=False, exclude_input=exclude_input)
        cp = measure_saved_bytes(checkpointing=True, exclude_input=exclude_input)
        print(f'exclude input image: {exclude_input}')
        print(f'  timm ViT-S            {plain / mib:8.2f} MiB')
        print(f'  timm ViT-S, grad cp   {cp / mib:8.2f} MiB')
        for depth, indices in ((12, (11, )), (12, (3, 5, 7, 11)), (24, (23, ))):
            ours = measure_saved_bytes(depth=depth, out_indices=indices, exclude_input=exclude_input)
            print(f'  Dr2NetViT depth {depth:2d} out {indices}: {ours / mib:6.2f} MiB '
                  f'({100 * ours / plain:.2f} % of timm, {100 * ours / cp:.2f} % of timm cp)')
