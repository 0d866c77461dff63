"""Dr²Net for plain PyTorch / timm users: no MMEngine, mmdet or mmseg needed.

Turn a timm ViT you already have into its Dr²Net form, in place::

    import timm
    from dr2net_mm.timm_models import convert_timm_vit
    model = timm.create_model('vit_small_patch16_224', pretrained=True)
    convert_timm_vit(model, alpha=1.0, beta=0.1)   # same state-dict keys, same classifier head
    model.blocks.set_coefficients(0.3, 0.7)        # e.g. from your own schedule

or build it by name (importing this module registers the names with timm)::

    import dr2net_mm.timm_models  # noqa: F401
    model = timm.create_model('dr2net_vit_small_patch16_224.augreg_in21k_ft_in1k', pretrained=True)

``dr2net_<timm ViT name>`` exists for every timm ``vit_*`` / ``deit_*`` model of plain ``Block``s
listed in :data:`TIMM_VIT_NAMES`; the pretrained tag, ``pretrained_cfg_overlay=dict(file=...)``
(a local weight file) and ``checkpoint_path`` behave exactly as for the timm name, because the timm
model is built by timm first and converted afterwards.

Only the blocks change: ``model.blocks`` becomes a :class:`ReversibleBlocks` that keeps the same
blocks under the same names (``blocks.0.*`` ...) and runs them as one reversible dual-residual
stage (Eq. 1 of the paper). At (α, β) = (1, 0) it computes timm's model exactly.
"""
from typing import Optional

import timm
from timm.layers import Mlp, PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn

from .branches import (AttentionWeights, MLPWeights, StageOptions, attention_mask_rows,
                       attention_rows, branch_sequence, check_block_type, fused_attention_plan,
                       fused_mlp_plan, global_attention_plan, sdpa, stage_options, token_plan)
from .core.chunks import BranchPlan, draws_random

__all__ = ['ViTAttentionBranch', 'ViTMLPBranch', 'VIT_BRANCHES', 'ReversibleBlocks',
           'convert_timm_vit', 'TIMM_VIT_NAMES']


def layer_scale(module: nn.Module):
    """The ``gamma`` of timm's ``LayerScale`` ``module``, None for ``nn.Identity`` (no layer
    scale), False for anything else (the fused plans do not know it)."""
    if isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, 'gamma', None)
    return gamma if isinstance(gamma, Tensor) else False


class ViTAttentionBranch(nn.Module):
    """``F(x) = drop_path1(ls1(attn(norm1(x))))``: the attention branch of a timm ``Block`` without its
    residual add. ``x``: ``(B, N, C)`` tokens; ``attn_mask`` (optional) is passed to timm's
    ``Attention`` (``scaled_dot_product_attention`` semantics). Returns ``(B, N, C)``.

    Holds references to the block's submodules (their parameters keep their names in the owner)."""

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

    def plan(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Optional[BranchPlan]:
        """The branch by groups of heads (``dr2net_mm.branches.fused_attention_plan``): per group
        its q, k, v from ``norm1(x)``, ``scaled_dot_product_attention`` (the group's entries of
        ``attn_mask``), its share of ``proj``; then ``ls1``, and ``merge`` applies drop path.
        Under autocast, or with a norm after the attention, by runs of query rows instead
        (``global_attention_plan``). timm's plain ``Attention`` only (no qk norm, no gate), no
        dropout inside; else None (the branch runs whole)."""
        attn = self.attn
        if type(attn) is not Attention or getattr(attn, 'gate', None) is not None or \
                not isinstance(attn.q_norm, nn.Identity) or \
                not isinstance(attn.k_norm, nn.Identity) or draws_random(attn):
            return None
        norm = getattr(attn, 'norm', nn.Identity())
        gamma = layer_scale(self.ls1)
        if isinstance(norm, nn.Identity) and gamma is not False:
            weights = AttentionWeights.of(attn.qkv, attn.proj, attn.num_heads, attn.scale, gamma)
            plan = fused_attention_plan(x, self.norm1, weights, attn_mask, self.drop_path1)
            if plan is not None:
                return plan
        parts = attention_rows(x.shape[0], x.shape[1], attn.num_heads)
        if parts is None:
            return None

        def attend(q: Tensor, k: Tensor, v: Tensor, sample: int, rows: slice) -> Tensor:
            return sdpa(q, k, v, attention_mask_rows(attn_mask, sample, rows))

        return global_attention_plan(parts, attn.qkv(self.norm1(x)), attn.num_heads, attend,
                                     lambda o: self.ls1(attn.proj(norm(o))), self.drop_path1)


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
        """The branch by groups of hidden units (``dr2net_mm.branches.fused_mlp_plan``): per group
        its share of ``fc1``, ``act`` and its share of ``fc2``; then ``ls2``, and ``merge`` applies
        drop path. timm's plain ``Mlp`` (linear layers, no norm inside). Otherwise, or under
        autocast, token by token (``token_plan``): ``body`` is norm, MLP and layer scale on rows of
        tokens. None with dropout inside."""
        mlp = self.mlp
        if draws_random(mlp):
            return None
        gamma = layer_scale(self.ls2)
        if type(mlp) is Mlp and isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear) \
                and isinstance(getattr(mlp, 'norm', nn.Identity()), nn.Identity) and gamma is not False:
            weights = MLPWeights.of(mlp.fc1, mlp.act, mlp.fc2, gamma)
            plan = fused_mlp_plan(x, self.norm2, weights, self.drop_path2)
            if plan is not None:
                return plan
        hidden = max(m.out_features for m in self.mlp.modules() if isinstance(m, nn.Linear))
        return token_plan(x, hidden, lambda h: self.ls2(self.mlp(self.norm2(h))), self.drop_path2)


# The two residual branches of a timm Block, in order
VIT_BRANCHES = (ViTAttentionBranch, ViTMLPBranch)


class ReversibleBlocks(nn.Module):
    """A timm ViT's ``blocks`` run as one reversible dual-residual stage.

    The blocks stay children named ``0``, ``1``, ... (so ``blocks.N.*`` state-dict keys do not
    change); α and β are plain attributes (no state-dict entries). ``forward(x)`` maps ``(B, N, C)``
    tokens to the last block's output like ``nn.Sequential``; iterating and indexing give the
    blocks, as timm's masked path expects (that path runs the blocks one by one, ordinary autograd).
    """

    def __init__(self, blocks, alpha: float = 1.0, beta: float = 0.1, reversible: bool = True,
                 stream_dtype='exact', segment_size: Optional[int] = None):
        super().__init__()
        blocks = list(blocks)
        for index, block in enumerate(blocks):
            self.add_module(str(index), block)
        self.sequence = branch_sequence(blocks, VIT_BRANCHES, stage_options(
            alpha, beta, reversible, stream_dtype, segment_size))

    def __len__(self) -> int:
        return len(self.sequence.functions) // 2

    def __iter__(self):
        return iter(self._modules[str(i)] for i in range(len(self)))

    def __getitem__(self, index: int) -> nn.Module:
        return list(self)[index]

    @property
    def coefficients(self):
        """``(alpha, beta)`` as the stage uses them."""
        return self.sequence.alpha, self.sequence.beta

    def set_coefficients(self, alpha: float, beta: float) -> None:
        """Set (α, β), each in [0, 1] (β > 0 when reversible)."""
        self.sequence.set_coefficients(alpha, beta)

    def reconstruction_error(self) -> Optional[float]:
        """The latest reversible backward's reconstruction error (0 for exact streams), or None."""
        return self.sequence.reconstruction_error()

    def forward(self, x: Tensor) -> Tensor:
        return self.sequence(x)

    def extra_repr(self) -> str:
        alpha, beta = self.coefficients
        return f'alpha={alpha:g}, beta={beta:g}, reversible={self.sequence.reversible}'


def convert_timm_vit(model: nn.Module, alpha: float = 1.0, beta: float = 0.1,
                     reversible: bool = True, stream_dtype='exact',
                     segment_size: Optional[int] = None) -> nn.Module:
    """Turn a timm ``VisionTransformer`` instance into its Dr²Net form, in place, and return it.

    ``model.blocks`` becomes a :class:`ReversibleBlocks` over the same block objects: the state-dict
    keys, the parameters (same tensors), the classifier head and ``forward`` stay as they were; the
    blocks now run as one reversible stage with coefficients (α, β) (see
    :class:`~dr2net_mm.core.ReversibleSequence` for ``reversible``, ``stream_dtype``,
    ``segment_size``). Change (α, β) later with ``model.blocks.set_coefficients(alpha, beta)``.
    Gradient checkpointing is switched off (the reversible stage replaces it)."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f'convert_timm_vit needs a timm VisionTransformer instance, got '
                        f'{type(model).__name__}')
    if isinstance(model.blocks, ReversibleBlocks):
        raise ValueError('this model is already converted (model.blocks is ReversibleBlocks); use '
                         'model.blocks.set_coefficients(alpha, beta) to change (alpha, beta)')
    if hasattr(model, 'dist_token'):
        raise ValueError(f'{type(model).__name__} has a distillation token; Dr²Net supports timm '
                         'VisionTransformer models without one')
    check_block_type(model.blocks, Block, type(model).__name__)
    if type(model.patch_embed) is not PatchEmbed:
        raise ValueError(f'the model embeds patches with a {type(model.patch_embed).__name__}; '
                         'Dr²Net supports timm PatchEmbed')
    model.blocks = ReversibleBlocks(model.blocks, alpha=alpha, beta=beta, reversible=reversible,
                                    stream_dtype=stream_dtype, segment_size=segment_size)
    model.grad_checkpointing = False
    return model


# ------------------------------------------------------------------------------------------------
# timm.create_model('dr2net_<name>') entrypoints
# ------------------------------------------------------------------------------------------------
TIMM_VIT_NAMES = (
    'vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_small_patch16_384',
    'vit_base_patch16_224', 'vit_base_patch16_384', 'vit_large_patch16_224',
    'vit_small_patch14_dinov2', 'vit_base_patch14_dinov2', 'vit_small_patch14_reg4_dinov2',
    'vit_base_patch14_reg4_dinov2', 'deit_tiny_patch16_224', 'deit_small_patch16_224',
    'deit_base_patch16_224', 'deit3_small_patch16_224', 'deit3_base_patch16_224',
)
_DR2NET_KWARGS = StageOptions._fields


def _entrypoint(timm_name: str):
    def create(pretrained: bool = False, **kwargs) -> nn.Module:
        dr2net = {k: kwargs.pop(k) for k in _DR2NET_KWARGS if k in kwargs}
        # timm's own entrypoint: its pretrained tags, local files and filters apply unchanged.
        model = timm.models.model_entrypoint(timm_name)(pretrained=pretrained, **kwargs)
        return convert_timm_vit(model, **dr2net)

    create.__name__ = f'dr2net_{timm_name}'
    create.__qualname__ = create.__name__
    create.__module__ = __name__
    create.__doc__ = (f"timm's {timm_name} converted by convert_timm_vit (keyword arguments "
                      f'{_DR2NET_KWARGS} go to it, the rest to timm).')
    return create


for _name in TIMM_VIT_NAMES:
    if timm.is_model(_name) and not timm.is_model(f'dr2net_{_name}'):
        globals()[f'dr2net_{_name}'] = register_model(_entrypoint(_name))
