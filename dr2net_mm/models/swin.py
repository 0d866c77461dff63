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

What a reversible stage keeps for backward: its output (shared with the output norm and patch
merging, which recomputes from it in backward), the final streams (with the default exact streams an
int32 remainder of ``x_n`` and the int64 ``y_n``: 3 float32-sized tensors) and the β buffer, about
log2(1/β) bits per element and branch (``dr2net_mm.core.streams``). The rebuild is bit-exact at every
(α, β), so one segment per stage is precise; :meth:`Dr2NetSwin.reconstruction_errors` is then exactly
0. Float64/float32 streams remain options (their rebuild amplifies rounding by ~(‖J‖ + α)/β per
branch, which ``segment_size`` bounds). Measured memory and gradient errors: README, Results.
"""
import logging
from typing import List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmdet.models.backbones.swin import SwinBlock, SwinTransformer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..checks import check_bool, check_segment_size, parse_stream_dtype
from ..core import ReversibleSequence
from ..core.chunks import BranchPlan, draws_random, row_parts
from .backbone import Dr2NetBackboneMixin, LoadReport, pretrained_init_cfg, unwrap_state_dict
from .swin_checkpoint import (DERIVED_BUFFERS, checkpoint_filter_fn, detect_checkpoint_format,
                              official_to_mmdet, resize_abs_pos_embed, resize_rel_pos_bias_table,
                              timm_to_official)

__all__ = [
    'Dr2NetSwin', 'Dr2NetSwinStage', 'SwinAttentionBranch', 'SwinFFNBranch', 'LoadReport',
    'checkpoint_filter_fn', 'detect_checkpoint_format', 'official_to_mmdet', 'timm_to_official',
    'unwrap_state_dict', 'resize_rel_pos_bias_table', 'resize_abs_pos_embed'
]


# ------------------------------------------------------------------------------------------------
# The residual branches of a SwinBlock, as functions of a reversible stage
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
        if use_checkpoint or draws_random(attn.w_msa):
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
        if len(row_parts(n_windows, row_elements)) == 1:  # whole images per part
            parts = row_parts(B * n_windows, row_elements, align=n_windows)
        else:  # runs of windows inside each image
            parts = [slice(b * n_windows + p.start, b * n_windows + p.stop)
                     for b in range(B) for p in row_parts(n_windows, row_elements)]
        if len(parts) == 1:
            return None  # the whole branch is one part: run it as it is

        def body(h: Tensor, part: slice) -> Tensor:
            if mask is None or (part.start % n_windows == 0 and h.shape[0] % n_windows == 0):
                return attn.w_msa(h, mask=mask)
            start = part.start % n_windows
            return attn.w_msa(h, mask=mask[start:start + h.shape[0]])

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
        if use_checkpoint or draws_random(ffn.layers):
            return None
        B, L, C = x.shape

        def body(h: Tensor, part: slice) -> Tensor:
            return ffn.gamma2(ffn.layers(self.norm2(h)))

        def merge(out: Tensor) -> Tensor:
            return ffn.dropout_layer(out.view(B, L, C))

        parts = row_parts(B * L, ffn.feedforward_channels)
        if len(parts) == 1:
            return None  # the whole branch is one part: run it as it is
        return BranchPlan(x.reshape(B * L, C), parts, body, merge)


class Dr2NetSwinStage(BaseModule):
    """One Swin stage: ``x = sequence(x, hw_shape)`` over the blocks' branches, then patch merging.

    Drop-in for mmdet's ``SwinBlockSequence``: same submodule names (``blocks``, ``downsample``), same
    state dict, same return value ``(x_down, down_hw_shape, x, hw_shape)``. ``sequence`` is a
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
        self.sequence = ReversibleSequence(functions, alpha=alpha, beta=beta, reversible=reversible,
                                           stream_dtype=stream_dtype, segment_size=segment_size,
                                           register_functions=False)
        self.with_cp = with_cp

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        sequence = self.sequence
        # Checkpointing only helps the ordinary autograd path (reference mode); the reversible path
        # keeps no per-branch activations and would recompute twice.
        use_cp = self.with_cp and not (sequence.reversible and sequence.training)
        x = sequence(x, hw_shape, use_cp)
        if self.downsample:
            if sequence.reversible and sequence.training and x.requires_grad:
                # The sequence keeps x (its output) for its backward anyway: recompute patch merging
                # from it rather than keep merging's own two activations (deterministic, exact).
                x_down, down_hw_shape = cp.checkpoint(self.downsample, x, hw_shape,
                                                        use_reentrant=False)
            else:
                x_down, down_hw_shape = self.downsample(x, hw_shape)
            return x_down, down_hw_shape, x, hw_shape
        return x, hw_shape, x, hw_shape


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
        stream_dtype: the streams in training: ``'exact'`` (default: fixed point with an exact β
            buffer, bit-exact rebuilds at any (α, β); values must stay within |x| < 2^21),
            ``torch.float64`` or ``torch.float32`` (or their names), whose rebuilds amplify rounding
            near the start point (1, 0.1) unless ``segment_size`` is small.
        segment_size: keep the streams every ``segment_size`` branches of a stage (bounds the error
            amplification of float streams at one stream pair each); None (default): once per stage,
            which is all exact streams need.
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
                 stream_dtype='exact',
                 segment_size=None):
        reversible = check_bool('reversible', reversible)
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
        for i, stage in enumerate(self.stages):  # each stage validates (alpha, beta)
            self.stages[i] = Dr2NetSwinStage(stage.blocks, stage.downsample, alpha, beta, reversible,
                                             stream_dtype, segment_size, with_cp)
        self._register_coefficients()
        if with_cp and reversible:
            print_log('Dr2NetSwin: with_cp=True has no effect while reversible=True (a reversible '
                      'stage keeps no per-block activations); it applies in reference mode only',
                      logger='current', level=logging.INFO)

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequence of every stage, in order."""
        return [stage.sequence for stage in self.stages]

    # --------------------------------------------------------------------------- weights
    def _derived_buffers(self) -> List[Tuple[str, Tensor]]:
        # relative position indices and attention masks (timm and converted checkpoints lack them)
        return [(n, b) for n, b in self.named_buffers() if n.endswith(DERIVED_BUFFERS)]

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
        self.load_pretrained_cfg(cfg)

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
