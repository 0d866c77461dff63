"""Dr2NetSwin3D: mmaction2's Video Swin Transformer with reversible dual-residual stages (Dr²Net).

Each stage (``BasicLayer``) of Video Swin is a chain of ``2·depth`` residual branches (every
``SwinTransformerBlock3D`` is an attention branch and an MLP branch), which Dr²Net runs as Eq. 1
(:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`) with, for block j of the stage (tokens
``x`` of shape ``(B, D, H, W, C)``, ``mask`` the stage's shifted-window attention mask, computed
once per stage by mmaction2's ``compute_mask``)::

    F_{2j-1}(x) = drop_path(forward_part1(x, mask))   # norm1, pad, shift, 3D window MSA, unshift, crop
    F_{2j}(x)   = forward_part2(x)                    # drop_path(mlp(norm2(x)))

At (α, β) = (1, 0) this is exactly mmaction2's ``SwinTransformer3D``. Patch embedding, patch merging
and the output norms stay ordinary layers outside the reversible stages. The parameters, their
names, the constructor arguments and the outputs are mmaction2's, so mmaction2 configs and
checkpoints work unchanged, and 2D Swin image checkpoints are inflated as mmaction2 does
(:func:`~dr2net_mm.models.swin3d_checkpoint.inflate_2d_state_dict`).

What a reversible stage keeps for backward: its output (shared with the output norm and patch
merging, which recomputes from it in backward), the final streams and the β buffer of exact streams
(about log2(1/β) bits per element and branch). The rebuild is bit-exact at every (α, β) with the
default exact streams, so :meth:`Dr2NetSwin3D.reconstruction_errors` reads exactly 0.
"""
from typing import List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from mmaction.models.backbones.swin import (BasicLayer, SwinTransformer3D, SwinTransformerBlock3D,
                                            compute_mask, get_window_size, window_partition,
                                            window_reverse)
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..branches import (StageOptions, branch_sequence, checkpoint_branches, checkpointed,
                        recompute_after, token_plan, window_attention_plan)
from ..core import ReversibleSequence
from ..core.chunks import BranchPlan, draws_random
from .backbone import MMACTION_INIT_CFG, Dr2NetBackboneMixin
from .swin3d_checkpoint import DERIVED_BUFFERS, checkpoint_filter_fn, detect_checkpoint_format

__all__ = ['Dr2NetSwin3D', 'Dr2NetSwin3DStage', 'Swin3DAttentionBranch', 'Swin3DMLPBranch']


# ------------------------------------------------------------------------------------------------
# The residual branches of a SwinTransformerBlock3D, as functions of a reversible stage
# ------------------------------------------------------------------------------------------------
class Swin3DAttentionBranch(nn.Module):
    """``F(x, mask) = drop_path(forward_part1(x, mask))``: the shifted-window attention branch of a
    ``SwinTransformerBlock3D`` without its residual add.

    Holds a reference to the block (its parameters keep their names in the backbone; this wrapper is
    registered nowhere). ``x``: ``(B, D, H, W, C)``; returns the same shape. ``use_checkpoint``:
    recompute the branch in backward (``with_cp``, :func:`~dr2net_mm.branches.checkpoint_branches`).
    """

    def __init__(self, block: SwinTransformerBlock3D):
        super().__init__()
        self.block = block

    def branch(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.block.drop_path(self.block.forward_part1(x, mask))

    def forward(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Tensor:
        return checkpointed(self.branch, x, mask, enabled=use_checkpoint)

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

        def merge(out: Tensor) -> Tensor:
            y = window_reverse(out.view(-1, *window_size, C), window_size, B, Dp, Hp, Wp)
            if shifted:
                y = torch.roll(y, shifts=tuple(shift_size), dims=(1, 2, 3))
            if any(pads):
                y = y[:, :D, :H, :W, :].contiguous()
            return block.drop_path(y)

        return window_attention_plan(windows, B, attn, attn.num_heads, mask if shifted else None,
                                     merge)


class Swin3DMLPBranch(nn.Module):
    """``F(x) = forward_part2(x) = drop_path(mlp(norm2(x)))``: the MLP branch of a
    ``SwinTransformerBlock3D``. ``mask`` is accepted and unused."""

    def __init__(self, block: SwinTransformerBlock3D):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Tensor:
        return checkpointed(self.block.forward_part2, x, enabled=use_checkpoint)

    def plan(self, x: Tensor, mask: Tensor, use_checkpoint: bool = False) -> Optional[BranchPlan]:
        """The branch token by token (see ``dr2net_mm.core.chunks``): ``body`` is norm and MLP on rows
        of tokens, ``merge`` applies drop path per sample."""
        block = self.block
        if use_checkpoint or draws_random(block.mlp):
            return None
        return token_plan(x, block.mlp.fc1.out_features, lambda h: block.mlp(block.norm2(h)),
                          block.drop_path)


class Dr2NetSwin3DStage(BaseModule):
    """One Video Swin stage: ``x = sequence(x, mask)`` over the blocks' branches, then patch merging.

    Drop-in for mmaction2's ``BasicLayer``: same submodule names (``blocks``, ``downsample``), same
    state dict, same ``forward(x, do_downsample)`` (input ``(B, C, D, H, W)``, output
    ``(B, D, H, W, C)``). ``sequence`` is a :class:`~dr2net_mm.core.ReversibleSequence` over
    ``[attn_1, mlp_1, attn_2, mlp_2, ...]`` that owns no parameters (it adds no state-dict keys).
    """

    def __init__(self, layer: BasicLayer, options: StageOptions, with_cp: bool = False):
        super().__init__()
        for name in ('embed_dims', 'window_size', 'shift_size', 'depth', 'blocks', 'downsample'):
            setattr(self, name, getattr(layer, name))  # BasicLayer's, under its names
        self.sequence = branch_sequence(self.blocks, (Swin3DAttentionBranch, Swin3DMLPBranch),
                                        options)
        self.with_cp = with_cp

    @property
    def out_embed_dims(self) -> int:
        return self.downsample.out_embed_dims if self.downsample is not None else self.embed_dims

    def merge_patches(self, x: Tensor) -> Tensor:
        """``downsample(x)`` (:func:`~dr2net_mm.branches.recompute_after`)."""
        return recompute_after(self.sequence, self.downsample, x)

    def forward(self, x: Tensor, do_downsample: bool = True) -> Tensor:
        """``(B, C, D, H, W)`` -> ``(B, D, H, W, C)`` (after patch merging if ``do_downsample``)."""
        B, C, D, H, W = x.shape
        window_size, shift_size = get_window_size((D, H, W), self.window_size, self.shift_size)
        x = rearrange(x, 'b c d h w -> b d h w c')
        Dp = int(np.ceil(D / window_size[0])) * window_size[0]
        Hp = int(np.ceil(H / window_size[1])) * window_size[1]
        Wp = int(np.ceil(W / window_size[2])) * window_size[2]
        attn_mask = compute_mask(Dp, Hp, Wp, window_size, shift_size, x.device)
        x = self.sequence(x, attn_mask, checkpoint_branches(self.with_cp, self.sequence))
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
    :class:`Swin3DAttentionBranch`, :class:`Swin3DMLPBranch`) as Eq. 1 of
    :class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin` and returns ``x_{2·depth}``; patch
    merging and the output norms follow as in mmaction2.

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

    Args: mmaction2's, then the Dr²Net arguments ``alpha``, ``beta``, ``reversible``,
    ``stream_dtype``, ``segment_size`` (:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`,
    which also says what ``with_cp`` does here). Besides:
        arch: as mmaction2; a dict's ``depths`` and ``num_heads`` need one entry per stage, checked.
        pretrained, pretrained2d: a checkpoint path (:meth:`init_weights`); 2D Swin image checkpoints
            are inflated as mmaction2's ``inflate_weights`` does, 3D ones loaded as they are
            (:func:`~dr2net_mm.models.swin3d_checkpoint.checkpoint_filter_fn`).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)
    scratch_init = BaseModule.init_weights  # runs init_cfg, by default mmaction2's
    derived_buffers = DERIVED_BUFFERS  # relative position indices (converted checkpoints lack them)

    def __init__(self, arch, pretrained=None, pretrained2d=True, patch_size=(2, 4, 4),
                 in_channels=3, window_size=(8, 7, 7), mlp_ratio=4., qkv_bias=True, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, act_cfg=dict(type='GELU'),
                 norm_cfg=dict(type='LN'), patch_norm=True, frozen_stages=-1, with_cp=False,
                 out_indices=(3, ), out_after_downsample=False, init_cfg=MMACTION_INIT_CFG, *,
                 alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact', segment_size=None):
        args = self._check_arguments(alpha, beta, reversible, stream_dtype, segment_size, with_cp,
                                     pretrained, init_cfg, MMACTION_INIT_CFG)
        if isinstance(arch, Mapping) and {'depths', 'num_heads'} <= set(arch):
            self._check_stage_lists({"arch['depths']": arch['depths'],
                                     "arch['num_heads']": arch['num_heads']})
        super().__init__(
            arch=arch, pretrained=None, pretrained2d=pretrained2d, patch_size=patch_size,
            in_channels=in_channels, window_size=window_size, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, act_cfg=act_cfg,
            norm_cfg=norm_cfg, patch_norm=patch_norm, frozen_stages=frozen_stages, with_cp=False,
            out_indices=out_indices, out_after_downsample=out_after_downsample,
            init_cfg=args.init_cfg)
        for i, layer in enumerate(self.layers):  # each stage checks (alpha, beta)
            self.layers[i] = Dr2NetSwin3DStage(layer, args.stage, args.with_cp)
        self._register_dr2net(args.with_cp)
        self._freeze_stages()  # the new stage modules too

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequence of every stage, in order."""
        return [layer.sequence for layer in self.layers]

    # --------------------------------------------------------------------------- forward
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
