"""Dr2NetSwin: mmdet's Swin Transformer backbone with reversible dual-residual stages (Dr²Net).

Each stage of Swin is a chain of ``2·depth`` residual branches (every ``SwinBlock`` is an attention
branch and an FFN branch), which Dr²Net runs as Eq. 1
(:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`) with, for block j of the stage (tokens
``x`` of shape ``(B, H·W, C)``, ``hw_shape = (H, W)``)::

    F_{2j-1}(x) = attn(norm1(x), hw_shape)                          # shifted-window MSA + drop path
    F_{2j}(x)   = ffn.dropout_layer(ffn.gamma2(ffn.layers(norm2(x))))  # mmcv FFN without its identity

At (α, β) = (1, 0) this is exactly mmdet's ``SwinTransformer``. Patch embedding, patch merging and
the output norms stay ordinary layers outside the reversible stages. The parameters, their names,
the constructor arguments and the outputs are mmdet's, so mmdet/mmseg configs and checkpoints work
unchanged.

What a reversible stage keeps for backward: its output (shared with the output norm and patch
merging, which recomputes from it in backward), the final streams (with the default exact streams an
int32 remainder of ``x_n`` and the int64 ``y_n``: 3 float32-sized tensors) and the β buffer, about
log2(1/β) bits per element and branch (``dr2net_mm.core.streams``). The rebuild is bit-exact at every
(α, β), so one segment per stage is precise: :meth:`Dr2NetSwin.reconstruction_errors` is exactly 0.
Measured memory and gradient errors: README, Results.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.backbones.swin import SwinBlock, SwinTransformer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..branches import (StageOptions, branch_sequence, checkpoint_branches, checkpointed,
                        ffn_weights, fused_mlp_plan, recompute_after, token_plan,
                        window_attention_plan)
from ..core import ReversibleSequence
from ..core.chunks import BranchPlan, draws_random
from .backbone import Dr2NetBackboneMixin
from .swin_checkpoint import (DERIVED_BUFFERS, checkpoint_filter_fn, detect_checkpoint_format,
                              resize_abs_pos_embed)

__all__ = ['Dr2NetSwin', 'Dr2NetSwinStage', 'SwinAttentionBranch', 'SwinFFNBranch']


# ------------------------------------------------------------------------------------------------
# The residual branches of a SwinBlock, as functions of a reversible stage
# ------------------------------------------------------------------------------------------------
class SwinAttentionBranch(nn.Module):
    """``F(x, hw_shape) = attn(norm1(x), hw_shape)``: the shifted-window attention branch of a
    ``SwinBlock`` without its residual add (mmdet's ``ShiftWindowMSA`` pads to whole windows, shifts,
    masks, and applies drop path to its output).

    Holds references to the block's ``norm1`` and ``attn`` (their parameters keep their names in the
    backbone). ``x``: ``(B, H·W, C)``; returns ``(B, H·W, C)``. ``use_checkpoint``: recompute the branch
    in backward (``with_cp``, :func:`~dr2net_mm.branches.checkpoint_branches`).
    """

    def __init__(self, block: SwinBlock):
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn

    def branch(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        return self.attn(self.norm1(x), hw_shape)

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False) -> Tensor:
        return checkpointed(self.branch, x, hw_shape, enabled=use_checkpoint)

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

        def merge(out: Tensor) -> Tensor:
            y = attn.window_reverse(out.view(-1, ws, ws, C), H_pad, W_pad)
            if shift > 0:
                y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
            if H_pad > H or W_pad > W:
                y = y[:, :H, :W, :].contiguous()
            return attn.drop(y.view(B, H * W, C))

        return window_attention_plan(windows, B, attn.w_msa, attn.w_msa.num_heads, mask, merge)


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
        return checkpointed(self.branch, x, enabled=use_checkpoint)

    def plan(self, x: Tensor, hw_shape: Tuple[int, int], use_checkpoint: bool = False
             ) -> Optional[BranchPlan]:
        """The branch by runs of tokens and groups of hidden units, its backward in the same pass
        (:func:`~dr2net_mm.branches.fused_mlp_plan`); under autocast, or for an FFN of more
        linears, token by token (:func:`~dr2net_mm.branches.token_plan`: ``body`` is norm and FFN
        layers on rows of tokens). ``merge`` applies drop path per sample."""
        ffn = self.ffn
        if use_checkpoint or draws_random(ffn.layers):
            return None
        weights = ffn_weights(ffn, None)
        if weights is not None:
            plan = fused_mlp_plan(x, self.norm2, weights, ffn.dropout_layer)
            if plan is not None:
                return plan
        return token_plan(x, ffn.feedforward_channels,
                          lambda h: ffn.gamma2(ffn.layers(self.norm2(h))), ffn.dropout_layer)


class Dr2NetSwinStage(BaseModule):
    """One Swin stage: ``x = sequence(x, hw_shape)`` over the blocks' branches, then patch merging.

    Drop-in for mmdet's ``SwinBlockSequence``: same submodule names (``blocks``, ``downsample``), same
    state dict, same return value ``(x_down, down_hw_shape, x, hw_shape)``. ``sequence`` is a
    :class:`~dr2net_mm.core.ReversibleSequence` over ``[attn_1, ffn_1, attn_2, ffn_2, ...]`` that owns
    no parameters (it adds no state-dict keys).
    """

    def __init__(self, blocks: nn.ModuleList, downsample: Optional[nn.Module],
                 options: StageOptions, with_cp: bool = False):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample
        self.sequence = branch_sequence(blocks, (SwinAttentionBranch, SwinFFNBranch), options)
        self.with_cp = with_cp

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]):
        x = self.sequence(x, hw_shape, checkpoint_branches(self.with_cp, self.sequence))
        if self.downsample:
            x_down, down_hw_shape = recompute_after(self.sequence, self.downsample, x, hw_shape)
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
    :class:`SwinAttentionBranch`, :class:`SwinFFNBranch`) as Eq. 1 of
    :class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin` and returns ``x_{2·depth}``; patch
    merging and the output norms follow as in mmdet.

    Input ``(B, in_channels, H, W)``; output: a list with, for each ``i`` in ``out_indices``, the
    ``norm{i}``-normalised stage-``i`` feature map ``(B, embed_dims·2^i, H_i, W_i)`` (NCHW) with
    ``H_0 = ceil(H / patch_size)``, ``H_{i+1} = ceil(H_i / 2)`` (likewise W).

    Differences from mmdet, none in the computed values: in reversible training patch merging is
    recomputed in backward from the stage output (which the stage keeps anyway) instead of keeping
    its own activations; with ``use_abs_pos_embed`` an input whose patch grid differs from
    ``pretrain_img_size``'s gets a bicubic-resized embedding (mmdet raises); ``pretrained=`` works
    (mmdet 3.3 drops it); ``train()`` returns the model; checkpoints of any Swin layout load.

    Args: mmdet's, then the Dr²Net arguments ``alpha``, ``beta``, ``reversible``, ``stream_dtype``,
    ``segment_size`` (:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`, which also says what
    ``with_cp`` and ``pretrained`` do here). Besides:
        depths, num_heads, strides: one entry per stage (``strides`` may have more), checked.
        convert_weights: accepted for compatibility; the checkpoint layout (official release, timm,
            mmdet/mmseg, bare) is detected from its keys
            (:func:`~dr2net_mm.models.swin_checkpoint.checkpoint_filter_fn`).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)
    scratch_init = SwinTransformer.init_weights  # mmdet's truncated-normal initialisation
    # relative position indices and attention masks (timm and converted checkpoints lack them)
    derived_buffers = DERIVED_BUFFERS

    def __init__(self, pretrain_img_size=224, in_channels=3, embed_dims=96, patch_size=4,
                 window_size=7, mlp_ratio=4, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 strides=(4, 2, 2, 2), out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None,
                 patch_norm=True, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1,
                 use_abs_pos_embed=False, act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN'),
                 with_cp=False, pretrained=None, convert_weights=False, frozen_stages=-1,
                 init_cfg=None, *, alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact',
                 segment_size=None):
        args = self._check_arguments(alpha, beta, reversible, stream_dtype, segment_size, with_cp,
                                     pretrained, init_cfg)
        self._check_stage_lists(dict(depths=depths, num_heads=num_heads, strides=strides),
                                longer_ok=('strides', ))
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
            init_cfg=args.init_cfg)
        size = pretrain_img_size if isinstance(pretrain_img_size, (tuple, list)) else \
            (pretrain_img_size, pretrain_img_size)
        size = tuple(size) * 2 if len(size) == 1 else tuple(size)
        self.pos_embed_grid = (size[0] // patch_size, size[1] // patch_size)
        for i, stage in enumerate(self.stages):  # each stage checks (alpha, beta)
            self.stages[i] = Dr2NetSwinStage(stage.blocks, stage.downsample, args.stage,
                                             args.with_cp)
        self._register_dr2net(args.with_cp)

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequence of every stage, in order."""
        return [stage.sequence for stage in self.stages]

    # --------------------------------------------------------------------------- forward
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
