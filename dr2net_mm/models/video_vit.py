"""Dr2NetVideoViT: mmaction2's VideoMAE ``VisionTransformer`` with its blocks run as one reversible
dual-residual stage (Dr²Net), and PlainVideoViT, its conventional / checkpointing baseline.

mmaction2's ``VisionTransformer`` (``mmaction.models.backbones.vit_mae``) embeds a clip ``(B, C, T, H,
W)`` into ``N = T/tubelet · H/p · W/p`` tokens (a Conv3d tubelet embedding), adds a sinusoid or
learnable position embedding and runs a chain of ``2·depth`` residual branches (every ``Block`` is
``x = x + drop_path(gamma_1 · attn(norm1(x)))`` then ``x = x + drop_path(gamma_2 · mlp(norm2(x)))``,
the gammas only where ``init_values > 0``), which Dr²Net runs as one reversible stage, Eq. 1
(:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`) with, for block b = 0..depth-1 (tokens
``x`` of shape ``(B, N, C)``)::

    F_{2b+1}(x) = drop_path(gamma_1 · attn(norm1(x)))    # multi-head self-attention branch
    F_{2b+2}(x) = drop_path(gamma_2 · mlp(norm2(x)))     # mmcv FFN (add_identity=False) branch

(without ``gamma_k ·`` where the block has no gammas), so the output of block b is ``x_{2(b+1)}``.
At (α, β) = (1, 0) this is exactly mmaction2's ``VisionTransformer``. Patch embedding, position
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
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmaction.models.backbones.vit_mae import Attention, Block, VisionTransformer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..branches import (AttentionWeights, attention_rows, branch_sequence, check_block_type,
                        checkpoint_branches, checkpointed, ffn_weights, fused_attention_plan,
                        fused_mlp_plan, global_attention_plan, sdpa, token_plan)
from ..core import ReversibleSequence
from ..core.chunks import BranchPlan, draws_random
from .backbone import MMACTION_INIT_CFG, ConventionalMixin, Dr2NetBackboneMixin
from .videomae_checkpoint import checkpoint_filter_fn, detect_checkpoint_format

__all__ = ['Dr2NetVideoViT', 'PlainVideoViT', 'VideoMAEBranch']


class VideoMAEBranch(nn.Module):
    """``F(x) = drop_path(gamma · layer(norm(x)))`` (``gamma ·`` only where the block has it), a
    residual branch of an mmaction2 VideoMAE ``Block`` without its residual add: :meth:`attention`
    (``norm1``, ``attn``, ``gamma_1``) or :meth:`mlp` (``norm2``, ``mlp``, ``gamma_2``; mmcv's ``FFN``
    built with ``add_identity=False``, so it returns the branch alone). Holds references to the
    block's submodules (their parameters keep their names in the backbone). ``x``: ``(B, N, C)``;
    returns ``(B, N, C)``. ``use_checkpoint``: recompute the branch in backward (``with_cp``,
    :func:`~dr2net_mm.branches.checkpoint_branches`)."""

    def __init__(self, norm: nn.Module, layer: nn.Module, drop_path: nn.Module,
                 gamma: Optional[nn.Parameter]):
        super().__init__()
        self.norm, self.layer, self.drop_path = norm, layer, drop_path
        self.gamma = gamma

    @classmethod
    def attention(cls, block: Block) -> 'VideoMAEBranch':
        return cls(block.norm1, block.attn, block.drop_path, getattr(block, 'gamma_1', None))

    @classmethod
    def mlp(cls, block: Block) -> 'VideoMAEBranch':
        return cls(block.norm2, block.mlp, block.drop_path, getattr(block, 'gamma_2', None))

    def branch(self, x: Tensor) -> Tensor:
        out = self.layer(self.norm(x))
        if self.gamma is not None:
            out = self.gamma * out
        return self.drop_path(out)

    def forward(self, x: Tensor, use_checkpoint: bool = False) -> Tensor:
        return checkpointed(self.branch, x, enabled=use_checkpoint)

    def _scaled(self, out: Tensor) -> Tensor:
        return out if self.gamma is None else self.gamma * out

    def plan(self, x: Tensor, use_checkpoint: bool = False) -> Optional[BranchPlan]:
        """The branch part by part (see ``dr2net_mm.core.chunks``). Attention: by groups of heads,
        each with its q, k, v from ``norm(x)`` (mmaction2's q/v biases),
        ``scaled_dot_product_attention`` with mmaction2's scale, its share of ``proj``, then
        ``gamma`` (:func:`~dr2net_mm.branches.fused_attention_plan`); under autocast ``qkv(norm(x))``
        once and runs of query rows against all keys and values
        (:func:`~dr2net_mm.branches.global_attention_plan`). MLP (mmcv's two-layer ``FFN``): by
        groups of hidden units, each with its share of both linears, then ``gamma``
        (:func:`~dr2net_mm.branches.fused_mlp_plan`); under autocast token by token
        (:func:`~dr2net_mm.branches.token_plan`). ``merge`` applies drop path. None with
        ``use_checkpoint``, or with dropout inside the layer."""
        layer = self.layer
        if use_checkpoint or draws_random(layer):
            return None
        if isinstance(layer, Attention):
            q_v = ((layer.q_bias, 0), None, (layer.v_bias, 0)) if hasattr(layer, 'q_bias') else None
            weights = AttentionWeights.of(layer.qkv, layer.proj, layer.num_heads, layer.scale,
                                          self.gamma, q_v)
            plan = fused_attention_plan(x, self.norm, weights, None, self.drop_path)
            if plan is not None:
                return plan
            parts = attention_rows(x.shape[0], x.shape[1], layer.num_heads)
            if parts is None:
                return None
            h = self.norm(x)
            if hasattr(layer, 'q_bias'):
                bias = torch.cat((layer.q_bias, torch.zeros_like(layer.v_bias), layer.v_bias))
                qkv = F.linear(h, layer.qkv.weight, bias)
            else:
                qkv = layer.qkv(h)

            def attend(q: Tensor, k: Tensor, v: Tensor, sample: int, rows: slice) -> Tensor:
                return sdpa(q, k, v, scale=layer.scale)

            return global_attention_plan(parts, qkv, layer.num_heads, attend,
                                         lambda o: self._scaled(layer.proj(o)), self.drop_path)
        weights = ffn_weights(layer, self.gamma)
        if weights is not None and isinstance(layer.dropout_layer, nn.Identity):
            plan = fused_mlp_plan(x, self.norm, weights, self.drop_path)
            if plan is not None:
                return plan
        return token_plan(x, layer.feedforward_channels,
                          lambda h: self._scaled(layer(self.norm(h))), self.drop_path)


# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
@MODELS.register_module()
class Dr2NetVideoViT(Dr2NetBackboneMixin, VisionTransformer):
    """mmaction2's VideoMAE ``VisionTransformer`` with its blocks run as one reversible dual-residual
    stage (Dr²Net): same arguments, defaults, submodules, state dict and outputs.

    The ``2·depth`` residual branches (:class:`VideoMAEBranch`) run as Eq. 1 of
    :class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`, where ``x_0`` is the embedded clip
    (tubelet tokens plus position embedding, after ``pos_drop``), ``(B, N, embed_dims)``, and
    ``x_{2·depth}`` goes on to ``norm`` and the pooling.

    Input ``(B, in_channels, num_frames, H, W)``; output as mmaction2: ``fc_norm`` of the token mean
    ``(B, embed_dims)`` (``use_mean_pooling``), else the first token after ``norm``, or with
    ``return_feat_map`` the tokens after ``norm`` as ``(B, embed_dims, T', H/p, W/p)``. For another
    spatial size than ``img_size`` the position embedding is resized bicubically (as mmaction2).

    Differences from mmaction2, none in the computed values: ``pretrained=PATH`` loads (mmaction2
    overwrites it with ``init_cfg`` and ignores it); a ``Pretrained`` ``init_cfg`` accepts official
    VideoMAE files and pretraining files besides mmaction2's
    (:func:`~dr2net_mm.models.videomae_checkpoint.checkpoint_filter_fn`) and refuses a checkpoint of
    another architecture (``PretrainedMismatchError``).

    Args: mmaction2's, then the Dr²Net arguments ``alpha``, ``beta``, ``reversible``,
    ``stream_dtype``, ``segment_size``, ``with_cp``
    (:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`, which also says what ``pretrained``
    does here).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)
    scratch_init = BaseModule.init_weights  # runs init_cfg, by default mmaction2's
    # a fixed sinusoid pos_embed is a buffer, which official VideoMAE files do not store
    derived_buffers = ('pos_embed', )

    def __init__(self, img_size=224, patch_size=16, in_channels=3, embed_dims=768, depth=12,
                 num_heads=12, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0., norm_cfg=dict(type='LN', eps=1e-6),
                 init_values=0., use_learnable_pos_emb=False, num_frames=16, tubelet_size=2,
                 use_mean_pooling=True, pretrained=None, return_feat_map=False,
                 init_cfg=MMACTION_INIT_CFG, *, alpha=1.0, beta=0.1, reversible=True,
                 stream_dtype='exact', segment_size=None, with_cp=False, **kwargs) -> None:
        args = self._check_arguments(alpha, beta, reversible, stream_dtype, segment_size, with_cp,
                                     pretrained, init_cfg, MMACTION_INIT_CFG)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            embed_dims=embed_dims, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_cfg=norm_cfg,
            init_values=init_values, use_learnable_pos_emb=use_learnable_pos_emb,
            num_frames=num_frames, tubelet_size=tubelet_size, use_mean_pooling=use_mean_pooling,
            pretrained=None, return_feat_map=return_feat_map, init_cfg=args.init_cfg, **kwargs)
        check_block_type(self.blocks, Block, type(self).__name__)
        self.depth = len(self.blocks)
        self.sequence = branch_sequence(self.blocks, (VideoMAEBranch.attention, VideoMAEBranch.mlp),
                                        args.stage)  # checks (α, β)
        self._register_dr2net(args.with_cp)

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequences (one: all blocks)."""
        return [self.sequence]

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
        return self.sequence(x, checkpoint_branches(self.with_cp, self.sequence))

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
class PlainVideoViT(ConventionalMixin, Dr2NetVideoViT):
    """The conventional VideoMAE ViT (:class:`~dr2net_mm.models.backbone.ConventionalMixin`): the
    module, arguments and checkpoints of :class:`Dr2NetVideoViT`, its blocks run as mmaction2 runs
    them; ``with_cp=True`` checkpoints every block, which mmaction2's ``VisionTransformer`` lacks."""
    network = 'VideoMAE ViT'

    def _run_blocks(self, x: Tensor) -> Tensor:
        *_, x = self._blocks_in_turn(self.blocks, x)
        return x
