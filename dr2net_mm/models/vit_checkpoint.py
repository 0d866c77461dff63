"""ViT checkpoints -> Dr2NetViT's (= timm's) layout: state dict in -> state dict out.

Layouts: timm ``VisionTransformer`` (also the official DeiT / MAE / DINOv2 releases that timm's own
filter understands), mmseg and mmpretrain ``VisionTransformer``, bare or under ``backbone.`` in a
segmentor / classifier checkpoint. Given a model, the tensors are fitted to it (position embedding
and patch kernel resampled by timm's ``checkpoint_filter_fn``, class-token entries folded or dropped).
"""
import logging
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional

from mmengine.logging import print_log
from torch import Tensor, nn

from .pretrained import unwrap_state_dict

__all__ = ['checkpoint_filter_fn', 'detect_checkpoint_format', 'openmmlab_to_timm']

# Checkpoint keys of classifier heads, MAE decoders and other parts a backbone does not have.
_NON_BACKBONE = re.compile(r'^(head|head_dist|fc_norm|attn_pool|pre_logits|decoder\w*|mask_token|'
                           r'dist_token|head_drop)(\.|$)')


def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which ViT layout ``state_dict`` (prefixes already removed) is in:

    * ``'timm'``: timm's ``VisionTransformer`` (``blocks.N.attn.qkv``, ``patch_embed.proj``) -- also
      Dr2NetViT's own, and the official DeiT / MAE / DINOv2 releases that timm's filter understands;
    * ``'mmseg'``: mmseg's ``VisionTransformer`` (``layers.N.attn.attn.in_proj_weight``,
      ``layers.N.ffn.layers.0.0``, ``layers.N.ln1``, ``patch_embed.projection``, final norm ``ln1``);
    * ``'mmpretrain'``: mmpretrain's ``VisionTransformer`` (``layers.N.attn.qkv``, layer scale
      ``attn.gamma1.weight`` / ``ffn.gamma2.weight``, pre-norm ``pre_norm``, final norm ``ln1``).
    """
    keys = list(state_dict)
    if any(re.match(r'layers\.\d+\.attn\.attn\.in_proj_weight$', k) for k in keys):
        return 'mmseg'
    if any(re.match(r'layers\.\d+\.attn\.qkv\.', k) for k in keys):
        return 'mmpretrain'
    if any(re.match(r'blocks\.\d+\.', k) for k in keys):
        return 'timm'
    raise ValueError('the checkpoint does not look like a Vision Transformer (no blocks.N.* or '
                     f'layers.N.* keys); first keys: {keys[:8]}')


# mmseg / mmpretrain names inside ``layers.N.`` -> timm names inside ``blocks.N.``
_BLOCK_RENAMES = (
    ('ln1.', 'norm1.'), ('ln2.', 'norm2.'),
    ('attn.attn.in_proj_weight', 'attn.qkv.weight'), ('attn.attn.in_proj_bias', 'attn.qkv.bias'),
    ('attn.attn.out_proj.', 'attn.proj.'),  # mmseg (torch.nn.MultiheadAttention inside mmcv's)
    ('attn.qkv.', 'attn.qkv.'), ('attn.proj.', 'attn.proj.'),  # mmpretrain
    ('attn.gamma1.weight', 'ls1.gamma'), ('ffn.gamma2.weight', 'ls2.gamma'),  # layer scale
    ('ffn.layers.0.0.', 'mlp.fc1.'), ('ffn.layers.1.', 'mlp.fc2.'),
)
_TOP_RENAMES = (
    ('patch_embed.projection.', 'patch_embed.proj.'), ('ln1.', 'norm.'), ('ln_pre.', 'norm_pre.'),
    ('pre_norm.', 'norm_pre.'), ('ln2.', 'fc_norm.'),
)


def openmmlab_to_timm(state_dict: Mapping[str, Tensor], patch_bias: bool = True) -> Dict[str, Tensor]:
    """mmseg or mmpretrain ``VisionTransformer`` layout -> timm layout (names only, same tensors).

    ``torch.nn.MultiheadAttention``'s packed ``in_proj`` is q, k, v stacked in that order, the order of
    timm's ``qkv``, so the weights move over unchanged. mmseg builds its patch embedding without bias by
    default; with ``patch_bias`` a zero bias is added then (the same function as no bias). Both
    layouts keep a class-token entry at the front of ``pos_embed`` whenever they have a class token;
    :func:`checkpoint_filter_fn` fits that to the model."""
    out = OrderedDict()
    for key, value in state_dict.items():
        match = re.match(r'layers\.(\d+)\.(.*)$', key)
        if match:
            index, rest = match.groups()
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f'blocks.{index}.{rest}'] = value
            continue
        for old, new in _TOP_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    weight = out.get('patch_embed.proj.weight')
    if patch_bias and weight is not None and 'patch_embed.proj.bias' not in out:
        out['patch_embed.proj.bias'] = weight.new_zeros(weight.shape[0])
    return out


def _fit_prefix_positions(state_dict: Dict[str, Tensor], model: nn.Module, source_prefix: int) -> None:
    """An OpenMMLab ``pos_embed`` with ``source_prefix`` (0 or 1, the class token) leading entries ->
    the model's layout (in place): folded into the class token for ``no_embed_class`` models, dropped
    for models without class token."""
    pos = state_dict.get('pos_embed')
    model_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if pos is None or model.pos_embed is None or source_prefix == model_prefix:
        return
    if source_prefix == 1 and model_prefix == 0:
        if model.has_class_token and 'cls_token' in state_dict:
            state_dict['cls_token'] = state_dict['cls_token'] + pos[:, :1]
        elif not model.has_class_token:
            state_dict.pop('cls_token', None)
        state_dict['pos_embed'] = pos[:, 1:]
        return
    raise ValueError(f'cannot fit a position embedding with {source_prefix} prefix entries to a model '
                     f'with {model_prefix} (class token: {model.has_class_token}, register tokens: '
                     f'{model.num_reg_tokens}, no_embed_class: {model.no_embed_class})')


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional[nn.Module] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported ViT checkpoint -> a state dict in Dr2NetViT's (= timm's) layout.

    Accepts timm state dicts (and the official releases timm converts: DeiT, MAE, DINOv2 with or
    without registers, ...), mmseg and mmpretrain ``VisionTransformer`` state dicts, and whole
    segmentor / classifier checkpoints (keys under ``backbone.``); see :func:`detect_checkpoint_format`.
    Classifier heads, MAE decoders and mask tokens are dropped. With ``model`` the tensors are also
    fitted to it with timm's own ``checkpoint_filter_fn``: the position embedding resampled to the
    model's patch grid, the patch kernel resampled to its patch size, a class-token position entry
    folded or dropped as the model needs, the final norm dropped when the model has none.
    """
    state_dict = unwrap_state_dict(checkpoint, prefix)
    fmt = detect_checkpoint_format(state_dict)
    if fmt in ('mmseg', 'mmpretrain'):
        has_bias = model is None or model.patch_embed.proj.bias is not None
        source_prefix = 1 if (fmt == 'mmseg' or 'cls_token' in state_dict) else 0
        state_dict = openmmlab_to_timm(state_dict, patch_bias=has_bias)
        if model is not None:
            _fit_prefix_positions(state_dict, model, source_prefix)
    if model is not None:
        from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter
        state_dict = timm_filter(dict(state_dict), model)  # DINOv2 / CLIP conversions, resampling
    dropped = [k for k in state_dict if _NON_BACKBONE.match(k)]
    if model is not None and model.norm is None:
        dropped += [k for k in state_dict if k.startswith('norm.')]
    if dropped:
        print_log(f'Dr2NetViT checkpoint filter: dropped {len(dropped)} keys of parts the backbone does '
                  f'not have ({sorted({k.split(".")[0] for k in dropped})})', logger=logger,
                  level=logging.INFO)
    dropped = set(dropped)
    return OrderedDict((k, v) for k, v in state_dict.items() if k not in dropped)
