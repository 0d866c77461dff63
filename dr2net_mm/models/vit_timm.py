"""The timm ``VisionTransformer`` that :class:`~dr2net_mm.models.vit.Dr2NetViT` wraps: its
arguments translated to timm's and the built model checked to be one Dr2NetViT can run."""
import difflib
import inspect
from functools import partial
from typing import Any, Dict, Mapping, Optional

import timm
from timm.layers import LayerNorm, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..branches import check_block_type
from ..checks import check_int, check_positive, check_size

__all__ = ['timm_vit_kwargs', 'build_timm_vit']

# timm VisionTransformer arguments that Dr2NetViT sets itself (with the Dr2NetViT argument to use).
_RESERVED_TIMM_KWARGS = {
    'num_classes': None, 'global_pool': None, 'pretrained': None, 'features_only': None,
    'img_size': 'img_size', 'patch_size': 'patch_size', 'in_chans': 'in_channels',
    'embed_dim': 'embed_dims', 'depth': 'depth', 'num_heads': 'num_heads', 'mlp_ratio': 'mlp_ratio',
    'drop_path_rate': 'drop_path_rate', 'final_norm': 'final_norm', 'dynamic_img_size': None,
    'dynamic_img_pad': 'dynamic_img_pad'
}


def timm_vit_kwargs(arch, embed_dims, depth, num_heads, patch_size, mlp_ratio, img_size, in_channels,
                    drop_path_rate, norm_eps, timm_kwargs) -> Dict[str, Any]:
    """Dr2NetViT's architecture arguments (checked) -> keyword arguments of timm's
    ``VisionTransformer`` / ``timm.create_model``, with no classifier and no pooling."""
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
            kwargs[timm_name] = check_int(name, value)
    if embed_dims is not None and num_heads is not None and embed_dims % num_heads:
        raise ValueError(f'embed_dims={embed_dims} is not divisible by num_heads={num_heads}')
    if mlp_ratio is not None:
        kwargs['mlp_ratio'] = check_positive('mlp_ratio', mlp_ratio)
    if img_size is not None:
        kwargs['img_size'] = check_size('img_size', img_size)
    elif arch is None:
        kwargs['img_size'] = 224
    kwargs['in_chans'] = check_int('in_channels', in_channels)
    if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) or \
            not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f'drop_path_rate={drop_path_rate!r} must be a number in [0, 1)')
    kwargs['drop_path_rate'] = float(drop_path_rate)
    if norm_eps is not None:
        kwargs['norm_layer'] = partial(LayerNorm, eps=check_positive('norm_eps', norm_eps))
    kwargs.update(extra)
    return kwargs


def build_timm_vit(arch: Optional[str], kwargs: Dict[str, Any]) -> nn.Module:
    """timm's ``VisionTransformer`` for ``arch`` (a timm name, or None: the explicit ``kwargs``),
    checked to be a ViT of plain timm ``Block``s and ``PatchEmbed`` that Dr2NetViT can run."""
    if arch is None:
        model = VisionTransformer(**kwargs)
    else:
        if not isinstance(arch, str):
            raise TypeError(
                f'arch must be a timm model name (str) or None, got a {type(arch).__name__} object; '
                "write e.g. arch='vit_small_patch16_224', or convert a built timm model in place with "
                'dr2net_mm.timm_models.convert_timm_vit(model)')
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
    check_block_type(model.blocks, Block, f'arch={name!r}')
    if type(model.patch_embed) is not PatchEmbed:
        raise ValueError(f'arch={name!r} embeds patches with a {type(model.patch_embed).__name__} (e.g. a '
                         'hybrid CNN stem); Dr2NetViT supports timm PatchEmbed')
    if not isinstance(model.patch_drop, nn.Identity):
        raise ValueError('patch dropout (patch_drop_rate > 0) drops tokens, so no dense feature map can '
                         'be formed; remove patch_drop_rate from timm_kwargs')
    return model


def attention_takes_mask(block: nn.Module) -> bool:
    """Whether a timm ``Block``'s attention takes ``attn_mask`` (timm >= 1.0.16; before, x only)."""
    return 'attn_mask' in inspect.signature(block.attn.forward).parameters
