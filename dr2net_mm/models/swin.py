"""Dr2NetSwin: mmdet's Swin Transformer backbone with reversible dual-residual stages (Dr²Net).

Each stage of Swin is a chain of ``2·depth`` residual branches (every ``SwinBlock`` is an attention
branch and an FFN branch). Dr²Net (Zhao et al., CVPR 2024, Eq. 1) runs that chain as::

    x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

with, for block j of the stage (tokens ``x`` of shape ``(B, H·W, C)``, ``hw_shape = (H, W)``)::

    F_{2j-1}(x) = attn(norm1(x), hw_shape)                          # shifted-window MSA + drop path
    F_{2j}(x)   = ffn.dropout_layer(ffn.gamma2(ffn.layers(norm2(x))))  # mmcv FFN without its identity

At (α, β) = (1, 0) this is exactly mmdet's ``SwinTransformer``; for β > 0 every step is invertible, so
in training the backward rebuilds the activations of a stage from its output streams instead of keeping
them (see :mod:`dr2net_mm.core.reversible`). Patch embedding, patch merging and the output norms stay
ordinary layers outside the reversible stages. The parameters, their names, the constructor arguments
and the outputs are mmdet's, so mmdet/mmseg configs and checkpoints work unchanged.

Memory: bytes saved for backward by the backbone's training forward (activations only; batch 1,
512×512, Swin-T shape: embed 96, heads 3-6-12-24, window 7; float32 weights; (α, β) = (1, 0.1))::

                                        depths 2-2-6-2     depths 2-2-18-2
    mmdet SwinTransformer                  574.7 MiB           913.8 MiB
    mmdet SwinTransformer, with_cp          70.1 MiB            88.1 MiB
    Dr2NetSwin, float64 streams             54.3 MiB            54.3 MiB   (0.77 / 0.62 × with_cp)
    Dr2NetSwin, float32 streams             31.8 MiB            31.8 MiB   (0.45 / 0.36 × with_cp)
    Dr2NetSwin, float64, segment_size=4     66.3 MiB           102.3 MiB

What a reversible stage keeps: its output (shared with the output norm and patch merging, which
recomputes from it in backward) and, for float64 streams, a float32 remainder of ``x_n`` and the
float64 ``y_n``: 4 float32-sized tensors per stage (2 with float32 streams), independent of depth. The
rest (9 MiB) is the patch embedding's input image and norm input. Measured with
``pytest tests/test_swin.py -k saved_bytes -s`` (CPU, torch 2.14, mmdet 3.3).

Precision (``dr2net_mm.core.gradient_error``, Swin-T shape, drop path 0.2, train mode, random init,
112×112 input; worst relative gradient error against a float64 model, float32 autograd's own is
~8e-7 to 9e-7): at (0.3, 0.7) float64 streams give 9.1e-7 (= ordinary autograd). At the start point
(1, 0.1) rebuilding 12 branches (Swin-T's third stage) amplifies rounding ~11x per branch: 7e-2 with
float64 streams, garbage with float32; ``segment_size=4`` brings float64 to 8.2e-7 (the floor), which
is why ``configs/dino_dr2net_swin_t_coco.py`` uses it. The α×β map: ``tools/grad_error_map.py``.
Watch :meth:`Dr2NetSwin.reconstruction_errors`.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import SwinBlock, SwinTransformer, swin_converter
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..core import ReversibleSequence, check_coefficients
from ..core.chunks import BranchPlan, draws_random, row_parts
from .common import (Dr2NetBackboneMixin, LoadReport, check_bool, check_segment_size,
                     parse_stream_dtype, pretrained_init_cfg, unwrap_state_dict)

__all__ = [
    'Dr2NetSwin', 'Dr2NetSwinStage', 'SwinAttentionBranch', 'SwinFFNBranch', 'LoadReport',
    'checkpoint_filter_fn', 'detect_checkpoint_format', 'official_to_mmdet', 'timm_to_official',
    'unwrap_state_dict', 'resize_rel_pos_bias_table', 'resize_abs_pos_embed'
]

_DERIVED_BUFFERS = ('relative_position_index', 'attn_mask')


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# The residual branches of a SwinBlock, as engine functions
# ------------------------------------------------------------------------------------------------
class SwinAttentionBranch(nn.Module):
    """``F(x, hw_shape) = attn(norm1(x), hw_shape)``: the shifted-window attention branch of a
    ``SwinBlock`` without its residual add (mmdet's ``ShiftWindowMSA`` pads to whole windows, shifts,
    masks, and applies drop path to its output).

    Holds references to the block's ``norm1`` and ``attn`` (their parameters keep their names in the
    backbone). ``x``: ``(B, H·W, C)``; returns ``(B, H·W, C)``. ``use_checkpoint``: recompute the branch
    in backward (``torch.utils.checkpoint``), used by ``with_cp`` in reference mode only.
    """

    def __init__(self, block: SwinBlock):
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn

    def branch(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        return self.attn(self.norm1(x), hw_shape)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False) -> Tensor:
        if use_checkpoint and x.requires_grad:
            return cp.checkpoint(self.branch, x, hw_shape, use_reentrant=False)
        return self.branch(x, hw_shape)

    def plan(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False
             ) -> Optional[BranchPlan]:
        """The branch window by window (see ``dr2net_mm.core.chunks``): ``inputs`` are the shifted
        windows of ``norm1(x)`` ``(B·nW, ws², C)``, ``body`` is the window attention of a run of windows
        of one image, ``merge`` reverses windows and shift and applies drop path, as ``ShiftWindowMSA``."""
        attn = self.attn
        if draws_random(attn.w_msa):
            return None
        B, L, C = x.shape
        H, W = hw_shape
        ws, shift = attn.window_size, attn.shift_size
        query = self.norm1(x).view(B, H, W, C)
        query = F.pad(query, (0, 0, 0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        H_pad, W_pad = query.shape[1], query.shape[2]
        mask = None
        if shift > 0:
            query = torch.roll(query, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(attn, H_pad, W_pad, x.device)
        windows = attn.window_partition(query).view(-1, ws * ws, C)
        n_windows = (H_pad // ws) * (W_pad // ws)
        heads = attn.w_msa.num_heads
        row_elements = max(3 * ws * ws * C, heads * ws**4)  # qkv, or the attention matrix
        parts = [slice(b * n_windows + p.start, b * n_windows + p.stop)
                 for b in range(B) for p in row_parts(n_windows, row_elements)]

        def body(h: Tensor, part: slice) -> Tensor:
            start = part.start % n_windows
            return attn.w_msa(h, mask=None if mask is None else mask[start:start + h.shape[0]])

        def merge(out: Tensor) -> Tensor:
            y = attn.window_reverse(out.view(-1, ws, ws, C), H_pad, W_pad)
            if shift > 0:
                y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
            if H_pad > H or W_pad > W:
                y = y[:, :H, :W, :].contiguous()
            return attn.drop(y.view(B, H * W, C))

        return BranchPlan(windows, parts, body, merge)


def shifted_window_mask(attn: nn.Module, H_pad: int, W_pad: int, device: torch.device) -> Tensor:
    """The ``(nW, ws², ws²)`` attention mask (0 or -100) that mmdet's ``ShiftWindowMSA`` builds for
    shifted windows: tokens from different regions of the rolled image do not attend to each other."""
    ws, shift = attn.window_size, attn.shift_size
    region = torch.zeros((1, H_pad, W_pad, 1), device=device)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for k, (h, w) in enumerate((h, w) for h in bands for w in bands):
        region[:, h, w, :] = k
    ids = attn.window_partition(region).view(-1, ws * ws)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SwinFFNBranch(nn.Module):
    """``F(x) = ffn.dropout_layer(ffn.gamma2(ffn.layers(norm2(x))))``: the FFN branch of a ``SwinBlock``
    without the identity add of mmcv's ``FFN`` (``FFN.forward`` returns ``identity + that``).

    ``x``: ``(B, H·W, C)``; returns ``(B, H·W, C)``; ``hw_shape`` is accepted and unused.
    """

    def __init__(self, block: SwinBlock):
        super().__init__()
        self.norm2 = block.norm2
        self.ffn = block.ffn

    def branch(self, x: Tensor) -> Tensor:
        ffn = self.ffn
        return ffn.dropout_layer(ffn.gamma2(ffn.layers(self.norm2(x))))

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False) -> Tensor:
        if use_checkpoint and x.requires_grad:
            return cp.checkpoint(self.branch, x, use_reentrant=False)
        return self.branch(x)

    def plan(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False
             ) -> Optional[BranchPlan]:
        """The branch token by token (see ``dr2net_mm.core.chunks``): ``body`` is norm and FFN layers
        on rows of tokens, ``merge`` applies drop path per sample."""
        ffn = self.ffn
        if draws_random(ffn.layers):
            return None
        B, L, C = x.shape

        def body(h: Tensor, part: slice) -> Tensor:
            return ffn.gamma2(ffn.layers(self.norm2(h)))

        def merge(out: Tensor) -> Tensor:
            return ffn.dropout_layer(out.view(B, L, C))

        return BranchPlan(x.reshape(B * L, C), row_parts(B * L, ffn.feedforward_channels), body,
                          merge)


class Dr2NetSwinStage(BaseModule):
    """One Swin stage: ``x = engine(x, hw_shape)`` over the blocks' branches, then patch merging.

    Drop-in for mmdet's ``SwinBlockSequence``: same submodule names (``blocks``, ``downsample``), same
    state dict, same return value ``(x_down, down_hw_shape, x, hw_shape)``. ``engine`` is a
    :class:`~dr2net_mm.core.ReversibleSequence` over ``[attn_1, ffn_1, attn_2, ffn_2, ...]`` that owns
    no parameters (it adds no state-dict keys).
    """

    def __init__(self, blocks: nn.ModuleList, downsample: Optional[nn.Module], alpha: float,
                 beta: float, reversible: bool, stream_dtype: torch.dtype,
                 segment_size: Optional[int], with_cp: bool = False):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample
        functions: List[nn.Module] = []
        for block in blocks:
            functions += [SwinAttentionBranch(block), SwinFFNBranch(block)]
        self.engine = ReversibleSequence(functions, alpha=alpha, beta=beta, reversible=reversible,
                                         stream_dtype=stream_dtype, segment_size=segment_size,
                                         register_functions=False)
        self.with_cp = with_cp

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        engine = self.engine
        # Checkpointing only helps the ordinary autograd path (reference mode); the reversible path
        # keeps no per-branch activations and would recompute twice.
        use_cp = self.with_cp and not (engine.reversible and engine.training)
        x = engine(x, hw_shape, use_cp)
        if self.downsample:
            if engine.reversible and engine.training and x.requires_grad:
                # The engine keeps x (its output) for its backward anyway: recompute patch merging
                # from it rather than keep merging's own two activations (deterministic, exact).
                x_down, down_hw_shape = cp.checkpoint(self.downsample, x, hw_shape,
                                                        use_reentrant=False)
            else:
                x_down, down_hw_shape = self.downsample(x, hw_shape)
            return x_down, down_hw_shape, x, hw_shape
        return x, hw_shape, x, hw_shape


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion: pure functions, state dict in -> state dict out
# ------------------------------------------------------------------------------------------------
def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which Swin layout ``state_dict`` (prefixes already removed) is in:

    * ``'mmdet'``: mmdet/mmseg ``SwinTransformer`` (``stages.N.blocks.M.attn.w_msa.*``,
      ``patch_embed.projection.*``) -- also Dr2NetSwin's own;
    * ``'official'``: the Microsoft release files (``layers.N.blocks.M.attn.*``, ``mlp.fc1``; patch
      merging ``layers.N.downsample`` at the end of stage N, unfold order x0, x1, x2, x3), also
      old timm;
    * ``'timm'``: timm 0.9+ and 1.0 (same names, but patch merging at the *start* of stage N+1:
      ``layers.{N+1}.downsample``; ``head.fc``).
    """
    keys = list(state_dict)
    if any('logit_scale' in k or 'cpb_mlp' in k for k in keys):
        raise ValueError('this is a Swin V2 checkpoint (logit_scale / cpb_mlp); Dr2NetSwin is Swin V1')
    if any(k.startswith('stages.') or k.startswith('patch_embed.projection.') for k in keys):
        return 'mmdet'
    if any(k.startswith('layers.') for k in keys):
        if any(k.startswith('layers.0.downsample.') for k in keys):
            return 'official'
        if any(re.match(r'layers\.\d+\.downsample\.', k) for k in keys):
            return 'timm'
        return 'official'  # a single stage: both layouts agree
    raise ValueError('the checkpoint does not look like a Swin backbone (no stages.*/layers.* keys); '
                     f'first keys: {keys[:8]}')


def timm_to_official(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """timm (0.9+, 1.0) Swin layout -> official layout: ``layers.{N+1}.downsample`` ->
    ``layers.N.downsample`` (same tensors: timm's ``PatchMerging`` concatenates the 2×2 neighbours
    in the official order), the classifier (``head.*``) and the derived buffers dropped."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('head.') or key.endswith(_DERIVED_BUFFERS):
            continue
        match = re.match(r'layers\.(\d+)\.downsample\.(.*)$', key)
        if match:
            key = f'layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}'
        out[key] = value
    return out


def official_to_mmdet(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official Swin layout -> mmdet layout with mmdet's own ``swin_converter`` (names, the unfold
    channel order of patch merging), without the ``backbone.`` prefix it adds; derived buffers and the
    classifier dropped."""
    converted = swin_converter(OrderedDict(
        (k, v) for k, v in state_dict.items() if not k.endswith(_DERIVED_BUFFERS)))
    return OrderedDict((k[len('backbone.'):], v) for k, v in converted.items())


def resize_rel_pos_bias_table(table: Tensor, length: int) -> Tensor:
    """A ``((2W-1)², heads)`` relative position bias table resized to ``length`` rows (another window
    size), bicubic on the ``(2W-1)×(2W-1)`` grid, as mmdet's ``init_weights`` does."""
    old_len, heads = table.shape
    s_old, s_new = int(round(math.sqrt(old_len))), int(round(math.sqrt(length)))
    if s_old * s_old != old_len or s_new * s_new != length:
        raise ValueError(f'cannot resize a relative position table of {old_len} rows to {length}')
    grid = table.t().reshape(1, heads, s_old, s_old).float()
    resized = F.interpolate(grid, size=(s_new, s_new), mode='bicubic')
    return resized.view(heads, length).t().contiguous().to(table.dtype)


def resize_abs_pos_embed(pos: Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> Tensor:
    """Absolute position embedding ``(1, H·W, C)`` on an ``src_hw`` grid, resized bicubic to
    ``dst_hw``."""
    if tuple(src_hw) == tuple(dst_hw):
        return pos
    channels = pos.shape[-1]
    grid = pos.reshape(1, src_hw[0], src_hw[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], channels)


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional['Dr2NetSwin'] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported Swin checkpoint -> a state dict in Dr2NetSwin's (= mmdet's) layout.

    Accepts an official release file, timm's ``swin_*`` state dicts, mmdet/mmseg detector or segmentor
    checkpoints (keys under ``backbone.``) and bare backbone state dicts (see
    :func:`detect_checkpoint_format`). Derived buffers (``relative_position_index``, ``attn_mask``) are
    dropped: the model computes its own. With ``model``: relative position bias tables are resized
    (bicubic) to the model's window size and the absolute position embedding to its patch grid.
    """
    state_dict = unwrap_state_dict(checkpoint, prefix)
    fmt = detect_checkpoint_format(state_dict)
    if fmt == 'timm':
        state_dict = timm_to_official(state_dict)
    if fmt in ('timm', 'official'):
        state_dict = official_to_mmdet(state_dict)
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith(_DERIVED_BUFFERS))
    if model is not None:
        state_dict = _adapt_to_model(state_dict, model, logger)
    return state_dict


def _adapt_to_model(state_dict: Dict[str, Tensor], model: nn.Module,
                    logger: Optional[logging.Logger]) -> Dict[str, Tensor]:
    own = model.state_dict()
    out = OrderedDict()
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and value.shape != target.shape:
            if key.endswith('relative_position_bias_table') and value.shape[1] == target.shape[1]:
                print_log(f'resizing {key} from {tuple(value.shape)} to {tuple(target.shape)} '
                          '(another window size, bicubic)', logger=logger, level=logging.INFO)
                value = resize_rel_pos_bias_table(value, target.shape[0])
            elif key == 'absolute_pos_embed' and value.dim() in (3, 4):
                if value.dim() == 4:  # (1, C, H, W), an older layout
                    src_hw = tuple(value.shape[2:])
                    value = value.flatten(2).transpose(1, 2)
                else:  # (1, H·W, C) on a square grid
                    side = int(round(math.sqrt(value.shape[1])))
                    src_hw = (side, side)
                if src_hw[0] * src_hw[1] == value.shape[1] and value.shape[2] == target.shape[2]:
                    print_log(f'resizing absolute_pos_embed from a {src_hw} to a '
                              f'{model.pos_embed_grid} patch grid (bicubic)', logger=logger,
                              level=logging.INFO)
                    value = resize_abs_pos_embed(value, src_hw, model.pos_embed_grid)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
@MODELS.register_module()
class Dr2NetSwin(Dr2NetBackboneMixin, SwinTransformer):
    """Swin Transformer with reversible dual-residual stages (Dr²Net), a drop-in for mmdet's
    ``SwinTransformer`` (and mmseg's): same arguments, defaults, submodules, state dict and outputs.

    Every stage runs its ``2·depth`` residual branches (attention, FFN of each block; see
    :class:`SwinAttentionBranch`, :class:`SwinFFNBranch`) as Eq. 1 of the paper::

        x_i = F_i(x_{i-1}, hw_shape) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},
        (x_0, y_0) = (x_0, β·x_0)

    and returns ``x_{2·depth}``; patch merging and the output norms follow as in mmdet. With (α, β) =
    (1, 0) it computes mmdet's Swin exactly; the paper finetunes from (1, 0.1) towards e.g. (0.3, 0.7)
    (change them with :meth:`set_coefficients`, e.g. from a hook).

    Input ``(B, in_channels, H, W)``; output: a list with, for each ``i`` in ``out_indices``, the
    ``norm{i}``-normalised stage-``i`` feature map ``(B, embed_dims·2^i, H_i, W_i)`` (NCHW) with
    ``H_0 = ceil(H / patch_size)``, ``H_{i+1} = ceil(H_i / 2)`` (likewise W).

    Differences from mmdet, none in the computed values: in reversible training patch merging is
    recomputed in backward from the stage output (which the stage keeps anyway) instead of keeping
    its own activations; with ``use_abs_pos_embed`` an input whose patch grid differs from
    ``pretrain_img_size``'s gets a bicubic-resized embedding (mmdet raises); ``pretrained=`` works
    (mmdet 3.3 drops it); ``train()`` returns the model; checkpoints of any Swin layout load.

    Args (those of mmdet's ``SwinTransformer``, plus):
        alpha, beta: the Dr²Net coefficients in [0, 1] (β > 0 when ``reversible``). Kept in the model
            as persistent float64 buffers ``alpha``/``beta`` (so checkpoints carry them); loading a
            state dict sets every stage to the loaded values; a checkpoint without them (e.g. mmdet's
            ``SwinTransformer``) keeps the current values. Change them with :meth:`set_coefficients`;
            other in-place writes to the buffers (EMA copies) are picked up at the next forward.
        reversible: True: in training with gradients each stage keeps only its final streams and
            rebuilds activations in backward (Eq. 2). False: ordinary autograd (the exact reference,
            also the mode for β = 0). In eval mode or under ``torch.no_grad()`` the forward is a plain
            loop either way (no bookkeeping, as fast as mmdet).
        stream_dtype: dtype of the two streams in training: ``torch.float64`` (default; needed near
            the start point (1, 0.1), see the module docstring) or ``torch.float32`` (enough near
            (0.3, 0.7)); the names 'float64'/'float32' work too.
        segment_size: keep the streams every ``segment_size`` branches of a stage (bounds the error
            amplification of long stages at one stream pair each); None: once per stage. Near the
            start point (1, 0.1) Swin-T's 12-branch third stage needs ``segment_size=4`` for precise
            gradients even with float64 streams (module docstring); settable later, e.g. back to
            None once the coefficients are near (0.3, 0.7).
        with_cp: accepted for config compatibility. A reversible stage keeps no per-block activations,
            so in reversible mode it has no effect (logged once at construction). In reference mode
            (``reversible=False``) it recomputes each branch in backward with
            ``torch.utils.checkpoint`` (as mmdet does per block), for memory-light exact training.
        convert_weights: accepted for compatibility; the checkpoint layout (official release, timm,
            mmdet/mmseg, bare) is detected from its keys (see :func:`checkpoint_filter_fn`).
        pretrained: deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``
            (mmseg segmentors pass it).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)

    def __init__(self,
                 pretrain_img_size=224,
                 in_channels=3,
                 embed_dims=96,
                 patch_size=4,
                 window_size=7,
                 mlp_ratio=4,
                 depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24),
                 strides=(4, 2, 2, 2),
                 out_indices=(0, 1, 2, 3),
                 qkv_bias=True,
                 qk_scale=None,
                 patch_norm=True,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.1,
                 use_abs_pos_embed=False,
                 act_cfg=dict(type='GELU'),
                 norm_cfg=dict(type='LN'),
                 with_cp=False,
                 pretrained=None,
                 convert_weights=False,
                 frozen_stages=-1,
                 init_cfg=None,
                 alpha=1.0,
                 beta=0.1,
                 reversible=True,
                 stream_dtype=torch.float64,
                 segment_size=None):
        reversible = check_bool('reversible', reversible)
        alpha, beta = check_coefficients(alpha, beta, reversible)
        stream_dtype = parse_stream_dtype(stream_dtype)
        segment_size = check_segment_size(segment_size)
        with_cp = check_bool('with_cp', with_cp)
        init_cfg = pretrained_init_cfg(pretrained, init_cfg)
        if isinstance(mlp_ratio, float) and mlp_ratio.is_integer():
            mlp_ratio = int(mlp_ratio)  # mmseg configs may write 4.0
        super().__init__(
            pretrain_img_size=pretrain_img_size, in_channels=in_channels, embed_dims=embed_dims,
            patch_size=patch_size, window_size=window_size, mlp_ratio=mlp_ratio, depths=depths,
            num_heads=num_heads, strides=strides, out_indices=out_indices, qkv_bias=qkv_bias,
            qk_scale=qk_scale, patch_norm=patch_norm, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            use_abs_pos_embed=use_abs_pos_embed, act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=False,
            pretrained=None, convert_weights=convert_weights, frozen_stages=frozen_stages,
            init_cfg=init_cfg)
        size = pretrain_img_size if isinstance(pretrain_img_size, (tuple, list)) else \
            (pretrain_img_size, pretrain_img_size)
        size = tuple(size) * 2 if len(size) == 1 else tuple(size)
        self.pos_embed_grid = (size[0] // patch_size, size[1] // patch_size)
        self.with_cp = with_cp
        self.register_buffer('alpha', torch.tensor(alpha, dtype=torch.float64))
        self.register_buffer('beta', torch.tensor(beta, dtype=torch.float64))
        self._coefficients = (alpha, beta)
        self._synced_buffers = self._buffer_versions()
        for i, stage in enumerate(self.stages):
            self.stages[i] = Dr2NetSwinStage(stage.blocks, stage.downsample, alpha, beta, reversible,
                                             stream_dtype, segment_size, with_cp)
        if with_cp and reversible:
            print_log('Dr2NetSwin: with_cp=True has no effect while reversible=True (a reversible '
                      'stage keeps no per-block activations); it applies in reference mode only',
                      logger='current', level=logging.INFO)

    @property
    def engines(self) -> List[ReversibleSequence]:
        """The reversible engine of every stage, in order."""
        return [stage.engine for stage in self.stages]

    # --------------------------------------------------------------------------- state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # α/β may be absent (an mmdet checkpoint keeps the current values), so may derived buffers
        # (timm and converted checkpoints: the model's own are right by construction).
        coefficients = self._take_coefficients(state_dict, prefix, error_msgs)
        for name, buffer in self.named_buffers():
            if name.endswith(_DERIVED_BUFFERS) and prefix + name not in state_dict:
                state_dict[prefix + name] = buffer
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if coefficients is not None:
            self._apply_coefficients(*coefficients)

    # --------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """From scratch as mmdet (``init_cfg=None``), or from ``init_cfg=dict(type='Pretrained',
        checkpoint=..., prefix=None)`` in any layout :func:`checkpoint_filter_fn` accepts."""
        cfg = self.init_cfg
        if cfg is None:
            super().init_weights()
            return
        if isinstance(cfg, (list, tuple)) or not isinstance(cfg, Mapping) or 'checkpoint' not in cfg:
            raise ValueError(f'{type(self).__name__} supports init_cfg=None or '
                             f"dict(type='Pretrained', checkpoint=...), got {cfg!r}")
        self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                             map_location=cfg.get('map_location', 'cpu'))

    # --------------------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> 'Dr2NetSwin':
        """Train/eval mode, keeping frozen stages in eval mode (mmdet's behaviour); returns self."""
        super().train(mode)
        return self

    def forward(self, x: Tensor) -> List[Tensor]:
        """``(B, in_channels, H, W)`` -> list of ``(B, embed_dims·2^i, H_i, W_i)``, one per
        ``out_indices``."""
        self._sync_coefficients()
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            # mmdet requires the pretraining patch grid; other sizes get a resized embedding.
            x = x + resize_abs_pos_embed(self.absolute_pos_embed, self.pos_embed_grid, hw_shape)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_hw_shape = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                out = out.view(-1, *out_hw_shape, self.num_features[i]).permute(0, 3, 1,
                                                                                 2).contiguous()
                outs.append(out)
        return outs
