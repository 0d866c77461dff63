"""Dr2NetSwin3D: mmaction2's Video Swin Transformer with reversible dual-residual stages (Dr²Net).

Each stage (``BasicLayer``) of Video Swin is a chain of ``2·depth`` residual branches (every
``SwinTransformerBlock3D`` is an attention branch and an MLP branch). Dr²Net (Zhao et al., CVPR 2024,
Eq. 1) runs that chain as::

    x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

with, for block j of the stage (tokens ``x`` of shape ``(B, D, H, W, C)``, ``mask`` the stage's
shifted-window attention mask, computed once per stage by mmaction2's ``compute_mask``)::

    F_{2j-1}(x) = drop_path(forward_part1(x, mask))   # norm1, pad, shift, 3D window MSA, unshift, crop
    F_{2j}(x)   = forward_part2(x)                    # drop_path(mlp(norm2(x)))

At (α, β) = (1, 0) this is exactly mmaction2's ``SwinTransformer3D``; for β > 0 every step is
invertible, so in training the backward rebuilds the activations of a stage from its output streams
instead of keeping them (see :mod:`dr2net_mm.core.reversible`). Patch embedding, patch merging and the
output norms stay ordinary layers outside the reversible stages. The parameters, their names, the
constructor arguments and the outputs are mmaction2's, so mmaction2 configs and checkpoints work
unchanged, and 2D Swin image checkpoints are inflated as mmaction2 does
(:func:`~dr2net_mm.models.swin3d_checkpoint.inflate_2d_state_dict`).

What a reversible stage keeps for backward: its output (shared with the output norm and patch
merging, which recomputes from it in backward), the final streams and the β buffer of exact streams
(about log2(1/β) bits per element and branch). The rebuild is bit-exact at every (α, β) with the
default exact streams, so :meth:`Dr2NetSwin3D.reconstruction_errors` reads exactly 0.
"""
import logging
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from einops import rearrange
from mmaction.models.backbones.swin import (BasicLayer, SwinTransformer3D, SwinTransformerBlock3D,
                                            compute_mask, get_window_size, window_partition,
                                            window_reverse)
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..checks import check_bool, check_segment_size, parse_stream_dtype
from ..core import ReversibleSequence
from ..core.chunks import BranchPlan, draws_random, row_parts
from .backbone import Dr2NetBackboneMixin
from .swin3d_checkpoint import (DERIVED_BUFFERS, checkpoint_filter_fn, detect_checkpoint_format,
                                inflate_2d_state_dict)

__all__ = [
    'Dr2NetSwin3D', 'Dr2NetSwin3DStage', 'Swin3DAttentionBranch', 'Swin3DMLPBranch',
    'checkpoint_filter_fn', 'detect_checkpoint_format', 'inflate_2d_state_dict'
]


# ------------------------------------------------------------------------------------------------
# The residual branches of a SwinTransformerBlock3D, as functions of a reversible stage
# ------------------------------------------------------------------------------------------------
class Swin3DAttentionBranch(nn.Module):
    """``F(x, mask) = drop_path(forward_part1(x, mask))``: the shifted-window attention branch of a
    ``SwinTransformerBlock3D`` without its residual add.

    Holds a reference to the block (its parameters keep their names in the backbone; this wrapper is
    registered nowhere). ``x``: ``(B, D, H, W, C)``; returns the same shape. ``use_checkpoint``:
    recompute the branch in backward (``torch.utils.checkpoint``), for ``with_cp`` in reference mode.
    """

    def __init__(self, block: SwinTransformerBlock3D):
        super().__init__()
        self.block = block

    def branch(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.block.drop_path(self.block.forward_part1(x, mask))

    def forward(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Tensor:
        if use_checkpoint and x.requires_grad:
            return cp.checkpoint(self.branch, x, mask, use_reentrant=False)
        return self.branch(x, mask)

    def plan(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Optional[BranchPlan]:
        """The branch window by window (see ``dr2net_mm.core.chunks``): ``inputs`` are the shifted 3D
        windows of ``norm1(x)`` ``(B·nW, Wd·Wh·Ww, C)``, ``body`` is the window attention of a run of
        windows of one clip, ``merge`` reverses windows and shift, crops the padding and applies drop
        path -- ``forward_part1`` step by step."""
        block = self.block
        attn = block.attn
        if use_checkpoint or draws_random(attn):
            return None
        B, D, H, W, C = x.shape
        window_size, shift_size = get_window_size((D, H, W), block.window_size, block.shift_size)
        pads = [(w - n % w) % w for n, w in zip((D, H, W), window_size)]
        h = F.pad(block.norm1(x), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        Dp, Hp, Wp = h.shape[1:4]
        shifted = any(i > 0 for i in shift_size)
        if shifted:
            h = torch.roll(h, shifts=tuple(-i for i in shift_size), dims=(1, 2, 3))
        windows = window_partition(h, window_size)
        tokens = windows.shape[1]
        n_windows = windows.shape[0] // B
        window_mask = mask if shifted else None
        row_elements = max(3 * tokens * C, attn.num_heads * tokens * tokens)  # qkv or attention
        if len(row_parts(n_windows, row_elements)) == 1:  # whole clips per part
            parts = row_parts(B * n_windows, row_elements, align=n_windows)
        else:  # runs of windows inside each clip
            parts = [slice(b * n_windows + p.start, b * n_windows + p.stop)
                     for b in range(B) for p in row_parts(n_windows, row_elements)]
        if len(parts) == 1:
            return None  # the whole branch is one part: run it as it is

        def body(h: Tensor, part: slice) -> Tensor:
            if window_mask is None or (part.start % n_windows == 0 and h.shape[0] % n_windows == 0):
                return attn(h, mask=window_mask)
            start = part.start % n_windows
            return attn(h, mask=window_mask[start:start + h.shape[0]])

        def merge(out: Tensor) -> Tensor:
            y = window_reverse(out.view(-1, *window_size, C), window_size, B, Dp, Hp, Wp)
            if shifted:
                y = torch.roll(y, shifts=tuple(shift_size), dims=(1, 2, 3))
            if any(pads):
                y = y[:, :D, :H, :W, :].contiguous()
            return block.drop_path(y)

        return BranchPlan(windows, parts, body, merge)


class Swin3DMLPBranch(nn.Module):
    """``F(x) = forward_part2(x) = drop_path(mlp(norm2(x)))``: the MLP branch of a
    ``SwinTransformerBlock3D``. ``mask`` is accepted and unused."""

    def __init__(self, block: SwinTransformerBlock3D):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Tensor:
        if use_checkpoint and x.requires_grad:
            return cp.checkpoint(self.block.forward_part2, x, use_reentrant=False)
        return self.block.forward_part2(x)

    def plan(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Optional[BranchPlan]:
        """The branch token by token (see ``dr2net_mm.core.chunks``): ``body`` is norm and MLP on rows
        of tokens, ``merge`` applies drop path per sample."""
        block = self.block
        if use_checkpoint or draws_random(block.mlp):
            return None
        shape, C = x.shape, x.shape[-1]

        def body(h: Tensor, part: slice) -> Tensor:
            return block.mlp(block.norm2(h))

        def merge(out: Tensor) -> Tensor:
            return block.drop_path(out.view(shape))

        parts = row_parts(x.numel() // C, block.mlp.fc1.out_features)
        if len(parts) == 1:
            return None  # the whole branch is one part: run it as it is
        return BranchPlan(x.reshape(-1, C), parts, body, merge)


class Dr2NetSwin3DStage(BaseModule):
    """One Video Swin stage: ``x = sequence(x, mask)`` over the blocks' branches, then patch merging.

    Drop-in for mmaction2's ``BasicLayer``: same submodule names (``blocks``, ``downsample``), same
    state dict, same ``forward(x, do_downsample)`` (input ``(B, C, D, H, W)``, output
    ``(B, D, H, W, C)``). ``sequence`` is a :class:`~dr2net_mm.core.ReversibleSequence` over
    ``[attn_1, mlp_1, attn_2, mlp_2, ...]`` that owns no parameters (it adds no state-dict keys).
    """

    def __init__(self, layer: BasicLayer, alpha: float, beta: float, reversible: bool,
                 stream_dtype: Union[torch.dtype, str], segment_size: Optional[int],
                 with_cp: bool = False):
        super().__init__()
        self.embed_dims = layer.embed_dims
        self.window_size = layer.window_size
        self.shift_size = layer.shift_size
        self.depth = layer.depth
        self.blocks = layer.blocks
        self.downsample = layer.downsample
        functions: List[nn.Module] = []
        for block in self.blocks:
            functions += [Swin3DAttentionBranch(block), Swin3DMLPBranch(block)]
        self.sequence = ReversibleSequence(functions, alpha=alpha, beta=beta, reversible=reversible,
                                           stream_dtype=stream_dtype, segment_size=segment_size,
                                           register_functions=False)
        self.with_cp = with_cp

    @property
    def out_embed_dims(self) -> int:
        return self.downsample.out_embed_dims if self.downsample is not None else self.embed_dims

    def _reversible_training(self, x: Tensor) -> bool:
        return self.sequence.reversible and self.sequence.training and x.requires_grad

    def merge_patches(self, x: Tensor) -> Tensor:
        """``downsample(x)``; in reversible training recomputed in backward from ``x`` (the stage
        output, which the sequence keeps for its own backward anyway) instead of keeping patch
        merging's activations (deterministic, exact)."""
        if self._reversible_training(x) and torch.is_grad_enabled():
            return cp.checkpoint(self.downsample, x, use_reentrant=False)
        return self.downsample(x)

    def forward(self, x: Tensor, do_downsample: bool = True) -> Tensor:
        """``(B, C, D, H, W)`` -> ``(B, D, H, W, C)`` (after patch merging if ``do_downsample``)."""
        B, C, D, H, W = x.shape
        window_size, shift_size = get_window_size((D, H, W), self.window_size, self.shift_size)
        x = rearrange(x, 'b c d h w -> b d h w c')
        Dp = int(np.ceil(D / window_size[0])) * window_size[0]
        Hp = int(np.ceil(H / window_size[1])) * window_size[1]
        Wp = int(np.ceil(W / window_size[2])) * window_size[2]
        attn_mask = compute_mask(Dp, Hp, Wp, window_size, shift_size, x.device)
        sequence = self.sequence
        # Checkpointing only helps the ordinary autograd path (reference mode); the reversible path
        # keeps no per-branch activations and would recompute twice.
        use_cp = self.with_cp and not (sequence.reversible and sequence.training)
        x = sequence(x, attn_mask, use_cp)
        if self.downsample is not None and do_downsample:
            x = self.merge_patches(x)
        return x


# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
@MODELS.register_module()
class Dr2NetSwin3D(Dr2NetBackboneMixin, SwinTransformer3D):
    """Video Swin Transformer with reversible dual-residual stages (Dr²Net), a drop-in for
    mmaction2's ``SwinTransformer3D``: same arguments, defaults, submodules, state dict and outputs.

    Every stage runs its ``2·depth`` residual branches (attention, MLP of each block; see
    :class:`Swin3DAttentionBranch`, :class:`Swin3DMLPBranch`) as Eq. 1 of the paper::

        x_i = F_i(x_{i-1}, mask) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},
        (x_0, y_0) = (x_0, β·x_0)

    and returns ``x_{2·depth}``; patch merging and the output norms follow as in mmaction2. With
    (α, β) = (1, 0) it computes mmaction2's Video Swin exactly; the paper finetunes from (1, 0.1)
    towards e.g. (0.3, 0.7) (change them with :meth:`set_coefficients`, e.g. from a hook).

    Input ``(B, in_channels, T, H, W)``; output (mmaction2's): for each ``i`` in ``out_indices`` the
    ``norm{i}``-normalised stage-``i`` feature map ``(B, C_i, T', H_i, W_i)`` (NCTHW; after the
    stage's patch merging when ``out_after_downsample``), one tensor when there is one index, else a
    tuple.

    Differences from mmaction2, none in the computed values: in reversible training patch merging is
    recomputed in backward from the stage output (which the stage keeps anyway) instead of keeping its
    own activations; pretrained weights go through :meth:`load_pretrained` (a report of what loaded,
    refusal of a checkpoint of another architecture), whose layout is detected from its keys (2D
    checkpoints are inflated whatever ``pretrained2d`` says, 3D ones loaded as they are, recognizer
    checkpoints' ``backbone.`` prefix removed); ``pretrained2d=True`` without ``pretrained``
    initialises from scratch (mmaction2 fails); ``train()`` returns the model.

    Args (those of mmaction2's ``SwinTransformer3D``, plus):
        alpha, beta: the Dr²Net coefficients in [0, 1] (β > 0 when ``reversible``), kept as
            persistent float64 buffers ``alpha``/``beta``; a checkpoint without them (mmaction2's)
            keeps the current values. Change them with :meth:`set_coefficients`.
        reversible: True: in training with gradients each stage keeps only its final streams and
            rebuilds activations in backward (Eq. 2). False: ordinary autograd (the exact reference,
            also the mode for β = 0). In eval mode or under ``torch.no_grad()`` the forward is a plain
            loop either way.
        stream_dtype: ``'exact'`` (default: fixed point with an exact β buffer, bit-exact rebuilds),
            ``torch.float64`` or ``torch.float32`` (or their names).
        segment_size: keep the streams every ``segment_size`` branches of a stage (bounds the error
            amplification of float streams); None (default): once per stage.
        with_cp: a reversible stage keeps no per-block activations, so in reversible mode it has no
            effect (logged once at construction). In reference mode (``reversible=False``) it
            recomputes each branch in backward with ``torch.utils.checkpoint`` (as mmaction2 does).
        pretrained, pretrained2d: a checkpoint path; 2D Swin image checkpoints are inflated as
            mmaction2's ``inflate_weights`` does, 3D ones loaded as they are.
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)

    def __init__(self,
                 arch,
                 pretrained=None,
                 pretrained2d=True,
                 patch_size=(2, 4, 4),
                 in_channels=3,
                 window_size=(8, 7, 7),
                 mlp_ratio=4.,
                 qkv_bias=True,
                 qk_scale=None,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.1,
                 act_cfg=dict(type='GELU'),
                 norm_cfg=dict(type='LN'),
                 patch_norm=True,
                 frozen_stages=-1,
                 with_cp=False,
                 out_indices=(3, ),
                 out_after_downsample=False,
                 init_cfg=[
                     dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                     dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
                 ],
                 alpha=1.0,
                 beta=0.1,
                 reversible=True,
                 stream_dtype='exact',
                 segment_size=None):
        reversible = check_bool('reversible', reversible)
        stream_dtype = parse_stream_dtype(stream_dtype)
        segment_size = check_segment_size(segment_size)
        with_cp = check_bool('with_cp', with_cp)
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
        super().__init__(
            arch=arch, pretrained=pretrained, pretrained2d=pretrained2d, patch_size=patch_size,
            in_channels=in_channels, window_size=window_size, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, act_cfg=act_cfg,
            norm_cfg=norm_cfg, patch_norm=patch_norm, frozen_stages=frozen_stages, with_cp=False,
            out_indices=out_indices, out_after_downsample=out_after_downsample, init_cfg=init_cfg)
        self.with_cp = with_cp
        for i, layer in enumerate(self.layers):  # each stage validates (alpha, beta)
            self.layers[i] = Dr2NetSwin3DStage(layer, alpha, beta, reversible, stream_dtype,
                                               segment_size, with_cp)
        self._register_coefficients()
        self._freeze_stages()  # the new stage modules too
        if with_cp and reversible:
            print_log('Dr2NetSwin3D: with_cp=True has no effect while reversible=True (a reversible '
                      'stage keeps no per-block activations); it applies in reference mode only',
                      logger='current', level=logging.INFO)

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequence of every stage, in order."""
        return [layer.sequence for layer in self.layers]

    # --------------------------------------------------------------------------- weights
    def _derived_buffers(self) -> List[Tuple[str, Tensor]]:
        # relative position indices (converted checkpoints lack them)
        return [(n, b) for n, b in self.named_buffers() if n.endswith(DERIVED_BUFFERS)]

    def init_weights(self) -> None:
        """``pretrained=PATH``: load it (2D Swin inflated, 3D loaded; see
        :func:`~dr2net_mm.models.swin3d_checkpoint.checkpoint_filter_fn`);
        ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None)``: the same; otherwise
        ``init_cfg`` as mmaction2 (by default truncated-normal Linear, unit LayerNorm)."""
        if self.pretrained:
            print_log(f'load model from: {self.pretrained}', logger='current', level=logging.INFO)
            self.load_pretrained(self.pretrained)
            return
        cfg = self.init_cfg
        if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained':
            self.load_pretrained_cfg(cfg)
            return
        BaseModule.init_weights(self)

    # --------------------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> 'Dr2NetSwin3D':
        """Train/eval mode, keeping frozen stages in eval mode (mmaction2's behaviour); returns self."""
        super().train(mode)
        return self

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, ...]]:
        """``(B, in_channels, T, H, W)`` -> ``(B, C_i, T', H_i, W_i)`` per ``out_indices`` (a tensor
        for one index, else a tuple), as mmaction2's ``SwinTransformer3D``."""
        self._sync_coefficients()
        x = self.patch_embed(x)
        x = self.pos_drop(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x.contiguous(), do_downsample=self.out_after_downsample)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(rearrange(out, 'b d h w c -> b c d h w').contiguous())
            if layer.downsample is not None and not self.out_after_downsample:
                x = layer.merge_patches(x)
            if i < self.num_layers - 1:
                x = rearrange(x, 'b d h w c -> b c d h w')
        if len(outs) == 1:
            return outs[0]
        return tuple(outs)
