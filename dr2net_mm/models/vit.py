"""Dr2NetViT: reversible finetuning of a timm Vision Transformer (Dr²Net) for dense prediction and tokens.

A plain ViT is a chain of ``2·depth`` residual branches (every timm ``Block`` is an attention branch and
an MLP branch), which Dr²Net runs as one reversible stage, Eq. 1
(:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`) with, for block b = 0..depth-1 of timm 1.0
(``Block.forward`` is ``x = x + F_attn(x); x = x + F_mlp(x)``)::

    F_{2b+1}(x) = drop_path1(ls1(attn(norm1(x))))      # multi-head self-attention branch
    F_{2b+2}(x) = drop_path2(ls2(mlp(norm2(x))))       # MLP branch

so the output of block b is the stream ``x_{2(b+1)}``. At (α, β) = (1, 0) this is exactly timm's
``VisionTransformer``. Patch embedding, position embedding and the final norm are ordinary layers
outside the reversible stage. The parameters keep timm's names (``patch_embed.proj``,
``cls_token``, ``reg_token``, ``pos_embed``, ``blocks.N.*``, ``norm``), so timm checkpoints (plain ViT,
DeiT, MAE, DINOv2 with layer scale and registers, ...) load with no conversion; mmseg and mmpretrain
``VisionTransformer`` checkpoints are converted by :func:`checkpoint_filter_fn`.

What the reversible stage keeps for backward: its final streams, ``x_n`` as the float32 output
(shared with the final norm, which keeps that same tensor) plus a 4-byte remainder, ``y_n`` in 8
bytes -- 16 bytes per token and channel -- and, with the default exact streams, the β buffer of about
log2(1/β) bits per token, channel and branch; intermediate outputs come out of the same stage and are
not kept. The patch embedding convolution keeps the caller's input image for its weight gradient (as
timm does). Exact streams rebuild bit for bit at any (α, β), so one segment is precise and
:meth:`reconstruction_errors` is exactly 0; float streams amplify rounding by roughly (‖J‖ + α)/β per
branch, which ``segment_size`` (in branches, two per block) bounds. Measured memory and gradient
errors: README, Results.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..branches import branch_sequence
from ..checks import check_bool, check_indices
from ..core import ReversibleSequence
from ..timm_models import VIT_BRANCHES
from .backbone import Dr2NetBackboneMixin
from .vit_checkpoint import checkpoint_filter_fn, detect_checkpoint_format
from .vit_timm import attention_takes_mask, build_timm_vit, timm_vit_kwargs

__all__ = ['Dr2NetViT']


@MODELS.register_module()
class Dr2NetViT(Dr2NetBackboneMixin, BaseModule):
    """A timm Vision Transformer with its blocks run as one reversible dual-residual stage (Dr²Net).

    The ``2·depth`` residual branches of the blocks
    (:class:`~dr2net_mm.timm_models.ViTAttentionBranch`,
    :class:`~dr2net_mm.timm_models.ViTMLPBranch`) run as Eq. 1 of
    :class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`, where ``x_0`` is the embedded token
    sequence (patch tokens plus class / register tokens plus position embedding, as timm) and the
    output of block ``b`` is ``x_{2(b+1)}``.

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
        alpha, beta, reversible, stream_dtype, segment_size: the Dr²Net arguments
            (:class:`~dr2net_mm.models.backbone.Dr2NetBackboneMixin`).
        init_cfg, pretrained: None (timm's random initialisation) or a checkpoint in any layout
            :func:`~dr2net_mm.models.vit_checkpoint.checkpoint_filter_fn` accepts
            (:meth:`init_weights`).
    """

    detect_format = staticmethod(detect_checkpoint_format)
    filter_checkpoint = staticmethod(checkpoint_filter_fn)
    scratch_init = None  # timm initialised the model when it was built

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
                 stream_dtype: Union[torch.dtype, str] = 'exact',
                 segment_size: Optional[int] = None,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        args = self._check_arguments(alpha, beta, reversible, stream_dtype, segment_size,
                                     pretrained=pretrained, init_cfg=init_cfg)
        final_norm = check_bool('final_norm', final_norm)
        dynamic_img_pad = check_bool('dynamic_img_pad', dynamic_img_pad)
        pos_embed_antialias = check_bool('pos_embed_antialias', pos_embed_antialias)
        if pos_embed_interp not in ('bicubic', 'bilinear', 'nearest'):
            raise ValueError(f"pos_embed_interp={pos_embed_interp!r} must be 'bicubic', 'bilinear' or "
                             "'nearest'")
        super().__init__(init_cfg=args.init_cfg)

        kwargs = timm_vit_kwargs(arch, embed_dims, depth, num_heads, patch_size, mlp_ratio, img_size,
                                 in_channels, drop_path_rate, norm_eps, timm_kwargs)
        vit = build_timm_vit(arch, kwargs)
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
        self.out_indices = check_indices('out_indices', out_indices, self.depth)

        self.sequence = branch_sequence(self.blocks, VIT_BRANCHES, args.stage)  # checks (α, β)
        self._register_dr2net()

    @property
    def sequences(self) -> List[ReversibleSequence]:
        """The reversible sequences (one: all blocks)."""
        return [self.sequence]

    # --------------------------------------------------------------------------- forward
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

    def _block_outputs(self, x: Tensor, out_indices: Tuple[int, ...],
                       attn_mask: Optional[Tensor]) -> List[Tensor]:
        """The outputs of the blocks ``out_indices`` (all from the one reversible stage)."""
        args = () if attn_mask is None else (attn_mask, )
        return list(self.sequence(x, *args, out_positions=[2 * (b + 1) for b in out_indices]))

    def _run_blocks(self, x: Tensor, out_indices: Tuple[int, ...],
                    attn_mask: Optional[Tensor]) -> List[Tensor]:
        outs = self._block_outputs(x, out_indices, attn_mask)
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
        if attn_mask is not None and not attention_takes_mask(self.blocks[0]):
            raise ValueError(f'attn_mask needs timm >= 1.0.16, whose attention takes a mask; this '
                             f'is timm {timm.__version__}')
        self._sync_coefficients()
        indices = self.out_indices if out_indices is None else check_indices(
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
