"""Dr2NetVideoViT: mmaction2's VideoMAE ``VisionTransformer`` with its blocks run as one reversible
dual-residual stage (Dr²Net), and PlainVideoViT, its conventional / checkpointing baseline.

mmaction2's ``VisionTransformer`` (``mmaction.models.backbones.vit_mae``) embeds a clip ``(B, C, T, H,
W)`` into ``N = T/tubelet · H/p · W/p`` tokens (a Conv3d tubelet embedding), adds a sinusoid or
learnable position embedding and runs a chain of ``2·depth`` residual branches (every ``Block`` is
``x = x + drop_path(gamma_1 · attn(norm1(x)))`` then ``x = x + drop_path(gamma_2 · mlp(norm2(x)))``,
the gammas only where ``init_values > 0``). Dr²Net (Zhao et al., CVPR 2024, Eq. 1) runs that chain as
one reversible stage::

    x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

with, for block b = 0..depth-1 (tokens ``x`` of shape ``(B, N, C)``)::

    F_{2b+1}(x) = drop_path(gamma_1 · attn(norm1(x)))    # multi-head self-attention branch
    F_{2b+2}(x) = drop_path(gamma_2 · mlp(norm2(x)))     # mmcv FFN (add_identity=False) branch

(without ``gamma_k ·`` where the block has no gammas), so the output of block b is ``x_{2(b+1)}``.
At (α, β) = (1, 0) this is exactly mmaction2's ``VisionTransformer``; for β > 0 every step is
invertible, and in training the backward rebuilds every activation of the blocks from the final
streams instead of keeping them (see :mod:`dr2net_mm.core.reversible`). Patch embedding, position
embedding, the final ``norm`` and the mean pooling with ``fc_norm`` are ordinary layers outside the
stage. Arguments, submodules, state-dict keys (plus the ``alpha``/``beta`` buffers) and outputs are
mmaction2's, so mmaction2 configs and checkpoints work unchanged; official VideoMAE releases are
converted by :func:`~dr2net_mm.models.videomae_checkpoint.checkpoint_filter_fn`.

What the stage keeps for backward: its final streams (with the default exact streams: the float32
output, shared with what follows, an int32 remainder and the int64 ``y_n`` -- 16 bytes per token
and channel) and the β buffer, about log2(1/β) bits per token, channel and branch; nothing per
block. The tubelet convolution keeps the caller's clip for its weight gradient (as mmaction2 does).
Exact streams rebuild bit for bit at any (α, β), so :meth:`reconstruction_errors` is exactly 0.
"""
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmaction.models.backbones.vit_mae import Block, VisionTransformer
from mmengine.logging import print_log
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..checks import check_bool, check_segment_size, parse_stream_dtype
from ..core import ReversibleSequence
from .backbone import Dr2NetBackboneMixin, LoadReport, unwrap_state_dict
from .videomae_checkpoint import (checkpoint_filter_fn, detect_checkpoint_format,
                                  videomae_to_mmaction)

__all__ = [
    'Dr2NetVideoViT', 'PlainVideoViT', 'VideoMAEAttentionBranch', 'VideoMAEMLPBranch', 'LoadReport',
    'checkpoint_filter_fn', 'detect_checkpoint_format', 'videomae_to_mmaction', 'unwrap_state_dict'
]

# mmaction2's VisionTransformer default init_cfg (copied so that the signatures compare equal)
_DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
]


# ------------------------------------------------------------------------------------------------
# The residual branches of an mmaction2 VideoMAE Block
# ------------------------------------------------------------------------------------------------
class _ScaledBranch(nn.Module):
    """``F(x) = drop_path(gamma · layer(norm(x)))`` (``gamma ·`` only where the block has it), a
    residual branch of an mmaction2 VideoMAE ``Block`` without its residual add. ``x``: ``(B, N, C)``;
    returns ``(B, N, C)``. ``use_checkpoint``: recompute the branch in backward
    (``torch.utils.checkpoint``), used by ``with_cp`` in reference mode only."""
    gamma: Optional[nn.Parameter]

    def layer(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        if self.gamma is not None:
            out = self.gamma * out
        return self.drop_path(out)

    def forward(self, x: Tensor, use_checkpoint: bool = False) -> Tensor:
        if use_checkpoint and x.requires_grad:
            return cp.checkpoint(self.branch, x, use_reentrant=False)
        return self.branch(x)


class VideoMAEAttentionBranch(_ScaledBranch):
    """``F(x) = drop_path(gamma_1 · attn(norm1(x)))``: the attention branch. Holds references to the
    block's ``norm1``, ``attn``, ``drop_path`` and ``gamma_1`` (their parameters keep their names in
    the backbone)."""

    def __init__(self, block: Block):
        super().__init__()
        self.norm1, self.attn, self.drop_path = block.norm1, block.attn, block.drop_path
        self.gamma = getattr(block, 'gamma_1', None)

    def layer(self, x: Tensor) -> Tensor:
        return self.attn(self.norm1(x))


class VideoMAEMLPBranch(_ScaledBranch):
    """``F(x) = drop_path(gamma_2 · mlp(norm2(x)))``: the MLP branch (``mlp`` is mmcv's ``FFN`` built
    with ``add_identity=False``, so it returns the branch alone)."""

    def __init__(self, block: Block):
        super().__init__()
        self.norm2, self.mlp, self.drop_path = block.norm2, block.mlp, block.drop_path
        self.gamma = getattr(block, 'gamma_2', None)

    def layer(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm2(x))


def _check_blocks(blocks) -> None:
    odd = sorted({type(b).__name__ for b in blocks if type(b).forward is not Block.forward})
    if odd:
        raise ValueError(f'Dr2NetVideoViT needs mmaction2 VideoMAE Blocks, got {odd}')


# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
@MODELS.register_module()
class Dr2NetVideoViT(Dr2NetBackboneMixin, VisionTransformer):
    """mmaction2's VideoMAE ``VisionTransformer`` with its blocks run as one reversible dual-residual
    stage (Dr²Net): same arguments, defaults, submodules, state dict and outputs.

    The ``2·depth`` residual branches (:class:`VideoMAEAttentionBranch`, :class:`VideoMAEMLPBranch`)
    run as Eq. 1 of the paper::

        x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

    where ``x_0`` is the embedded clip (tubelet tokens plus position embedding, after ``pos_drop``),
    ``(B, N, embed_dims)``, and ``x_{2·depth}`` goes on to ``norm`` and the pooling. With (α, β) =
    (1, 0) it computes mmaction2's ``VisionTransformer`` exactly; the paper finetunes from (1, 0.1)
    towards e.g. (0.3, 0.7) (change them with :meth:`set_coefficients`, e.g. from ``AlphaBetaHook``).

    Input ``(B, in_channels, num_frames, H, W)``; output as mmaction2: ``fc_norm`` of the token mean
    ``(B, embed_dims)`` (``use_mean_pooling``), else the first token after ``norm``, or with
    ``return_feat_map`` the tokens after ``norm`` as ``(B, embed_dims, T', H/p, W/p)``. For another
    spatial size than ``img_size`` the position embedding is resized bicubically (as mmaction2).

    Differences from mmaction2, none in the computed values: ``pretrained=PATH`` loads (mmaction2
    overwrites it with ``init_cfg`` and ignores it); a ``Pretrained`` ``init_cfg`` accepts official
    VideoMAE files and pretraining files besides mmaction2's (:func:`checkpoint_filter_fn`) and refuses
    a checkpoint of another architecture (``PretrainedMismatchError``).

    Args (those of mmaction2's ``VisionTransformer``, plus):
        alpha, beta: the Dr²Net coefficients in [0, 1] (β > 0 when ``reversible``). Kept in the model
            as persistent float64 buffers ``alpha``/``beta`` (so checkpoints carry them); loading a
            state dict sets the stage to the loaded values; a checkpoint without them (mmaction2's)
            keeps the current values.
        reversible: True: in training with gradients the stage keeps only its final streams and
            rebuilds activations in backward (Eq. 2). False: ordinary autograd (the exact reference,
            also the mode for β = 0). In eval mode or under ``torch.no_grad()`` the forward is a plain
            loop either way.
        stream_dtype: the streams in training: ``'exact'`` (default: bit-exact rebuilds at any
            (α, β), values within |x| < 2^21), ``torch.float64`` or ``torch.float32`` (or names).
        segment_size: keep the streams every ``segment_size`` branches (two per block) to bound the
            reconstruction error of float streams; None: one segment (all exact streams need).
        with_cp: a reversible stage keeps no per-block activations, so in reversible mode it has no
            effect (logged once at construction). In reference mode (``reversible=False``) every
            branch is recomputed in backward (``torch.utils.checkpoint``, non-reentrant).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)

    def __init__(self,
                 img_size: int = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 embed_dims: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: int = 4.,
                 qkv_bias: bool = True,
                 qk_scale: int = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_cfg=dict(type='LN', eps=1e-6),
                 init_values: int = 0.,
                 use_learnable_pos_emb: bool = False,
                 num_frames: int = 16,
                 tubelet_size: int = 2,
                 use_mean_pooling: int = True,
                 pretrained: Optional[str] = None,
                 return_feat_map: bool = False,
                 init_cfg=_DEFAULT_INIT_CFG,
                 alpha: float = 1.0,
                 beta: float = 0.1,
                 reversible: bool = True,
                 stream_dtype='exact',
                 segment_size: Optional[int] = None,
                 with_cp: bool = False,
                 **kwargs) -> None:
        reversible = check_bool('reversible', reversible)
        stream_dtype = parse_stream_dtype(stream_dtype)
        segment_size = check_segment_size(segment_size)
        with_cp = check_bool('with_cp', with_cp)
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
        if pretrained:  # what mmaction2 means to do (its BaseModule.__init__ overwrites it)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            embed_dims=embed_dims, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_cfg=norm_cfg,
            init_values=init_values, use_learnable_pos_emb=use_learnable_pos_emb,
            num_frames=num_frames, tubelet_size=tubelet_size, use_mean_pooling=use_mean_pooling,
            pretrained=None, return_feat_map=return_feat_map, init_cfg=init_cfg, **kwargs)
        _check_blocks(self.blocks)
        self.depth = len(self.blocks)
        functions: List[nn.Module] = []
        for block in self.blocks:
            functions += [VideoMAEAttentionBranch(block), VideoMAEMLPBranch(block)]
        self.sequence = ReversibleSequence(functions, alpha=alpha, beta=beta, reversible=reversible,
                                           stream_dtype=stream_dtype, segment_size=segment_size,
                                           register_functions=False)  # validates (alpha, beta)
        self._register_coefficients()
        self.with_cp = with_cp
        if with_cp and reversible:
            print_log(f'{type(self).__name__}: with_cp=True has no effect while reversible=True (the '
                      'reversible stage keeps no per-block activations); it applies in reference '
                      'mode only', logger='current', level=logging.INFO)

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequences (one: all blocks)."""
        return [self.sequence]

    # --------------------------------------------------------------------------- weights
    def _derived_buffers(self) -> List[Tuple[str, Tensor]]:
        # a fixed sinusoid pos_embed (a buffer; official VideoMAE files do not store it)
        return [] if isinstance(self.pos_embed, nn.Parameter) else [('pos_embed', self.pos_embed)]

    def init_weights(self) -> None:
        """mmaction2's initialisation (the default ``init_cfg``), or ``init_cfg=dict(
        type='Pretrained', checkpoint=..., prefix=None)`` in any layout :func:`checkpoint_filter_fn`
        accepts (official VideoMAE, its pretraining files, mmaction2 recognizers and backbones)."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self.load_pretrained_cfg(cfg)
            self._is_init = True
            return
        super().init_weights()

    # --------------------------------------------------------------------------- forward
    def resized_pos_embed(self, h: int, w: int) -> Tensor:
        """The position embedding for an ``h × w`` patch grid (mmaction2's bicubic resize of every
        frame group's ``grid_size`` map when the grid differs)."""
        if (h, w) == self.grid_size:
            return self.pos_embed
        pos_embed = self.pos_embed.reshape(-1, *self.grid_size, self.embed_dims)
        pos_embed = pos_embed.permute(0, 3, 1, 2)
        pos_embed = F.interpolate(pos_embed, size=(h, w), mode='bicubic', align_corners=False)
        pos_embed = pos_embed.permute(0, 2, 3, 1).flatten(1, 2)
        return pos_embed.reshape(1, -1, self.embed_dims)

    def embed(self, x: Tensor) -> Tensor:
        """A clip ``(B, in_channels, T, H, W)`` -> ``x_0``: tokens ``(B, N, embed_dims)`` plus position
        embedding, after ``pos_drop``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed(x)[0]
        x = x + self.resized_pos_embed(h, w)
        return self.pos_drop(x)

    def _run_blocks(self, x: Tensor) -> Tensor:
        sequence = self.sequence
        # Checkpointing only helps the ordinary autograd path (reference mode); the reversible path
        # keeps no per-branch activations and would recompute twice.
        use_cp = self.with_cp and not (sequence.reversible and sequence.training)
        return sequence(x, use_cp)

    def forward(self, x: Tensor) -> Tensor:
        """As mmaction2's ``VisionTransformer.forward`` (see the class doc for the outputs)."""
        self._sync_coefficients()
        b, _, _, h, w = x.shape
        h //= self.patch_size
        w //= self.patch_size
        x0 = self.embed(x)
        x = self._run_blocks(x0)
        if x.stride() != x0.stride():
            # mmaction2's tokens keep the tubelet embedding's memory layout (channels first) through
            # every block, and the token mean reduces in that memory order: the same layout, the
            # same bits. (A copy, kept by nothing.)
            x = torch.empty_like(x0).copy_(x)
        x = self.norm(x)
        if self.return_feat_map:
            x = x.reshape(b, -1, h, w, self.embed_dims)
            return x.permute(0, 4, 1, 2, 3)
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        return x[:, 0]

    def extra_repr(self) -> str:
        return (f'depth={self.depth}, embed_dims={self.embed_dims}, '
                f'patch_size={self.patch_size}, grid_size={self.grid_size}')


@MODELS.register_module()
class PlainVideoViT(Dr2NetVideoViT):
    """The conventional VideoMAE ViT: the same module as :class:`Dr2NetVideoViT` (same arguments and
    checkpoints) but its blocks run as mmaction2 runs them, ``x = block(x)`` with ordinary autograd
    on float32 activations -- mmaction2's computation and memory exactly, the baseline of end-to-end
    finetuning. (α, β) stay (1, 0): :meth:`set_coefficients` raises.

    ``with_cp=True``: activation checkpointing of every block in training (``torch.utils.checkpoint``,
    non-reentrant), which mmaction2's ``VisionTransformer`` lacks: the checkpointing baseline with the
    same state dict, the memory peer of Dr²Net."""

    def __init__(self, *args, with_cp: bool = False, **kwargs):
        given = [k for k in ('alpha', 'beta', 'reversible', 'stream_dtype', 'segment_size')
                 if k in kwargs]
        if given:
            raise ValueError(f'PlainVideoViT is the conventional VideoMAE ViT and takes no {given}; '
                             'use Dr2NetVideoViT for a reversible backbone')
        with_cp = check_bool('with_cp', with_cp)
        super().__init__(*args, alpha=1.0, beta=0.0, reversible=False, **kwargs)
        self.with_cp = with_cp

    def set_coefficients(self, alpha: float, beta: float) -> None:
        raise TypeError('PlainVideoViT is the conventional baseline, its (alpha, beta) are fixed at '
                        "(1, 0); remove AlphaBetaHook from the config or use type='Dr2NetVideoViT'")

    def _run_blocks(self, x: Tensor) -> Tensor:
        checkpointing = self.with_cp and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = cp.checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
        return x
