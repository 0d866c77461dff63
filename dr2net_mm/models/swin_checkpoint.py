"""Swin checkpoints -> Dr2NetSwin's (= mmdet's) layout: pure functions, state dict in -> state dict out.

Layouts: the official Microsoft release files, timm 0.9+/1.0 ``swin_*`` state dicts, mmdet/mmseg
``SwinTransformer`` (also Dr2NetSwin's own, bare or under ``backbone.`` in a detector / segmentor
checkpoint). Position tables are resized with timm's resizers when a model with another window size
or patch grid is given.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

from mmdet.models.backbones.swin import swin_converter
from mmengine.logging import print_log
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table_simple
from torch import Tensor, nn

from .pretrained import unwrap_state_dict

__all__ = [
    'checkpoint_filter_fn', 'detect_checkpoint_format', 'official_to_mmdet', 'timm_to_official',
    'resize_rel_pos_bias_table', 'resize_abs_pos_embed', 'DERIVED_BUFFERS'
]

# buffers the model computes itself; checkpoints need not (and timm's do not) carry them
DERIVED_BUFFERS = ('relative_position_index', 'attn_mask')


def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which Swin layout ``state_dict`` (prefixes already removed) is in:

    * ``'mmdet'``: mmdet/mmseg ``SwinTransformer`` (``stages.N.blocks.M.attn.w_msa.*``,
      ``patch_embed.projection.*``) -- also Dr2NetSwin's own;
    * ``'official'``: the Microsoft release files (``layers.N.blocks.M.attn.*``, ``mlp.fc1``; patch
      merging ``layers.N.downsample`` at the end of stage N, unfold order x0, x1, x2, x3), also
      old timm;
    * ``'timm'``: timm 0.9+ and 1.0 (same names, but patch merging at the *start* of stage N+1:
      ``layers.{N+1}.downsample``; ``head.fc``).
    """
    keys = list(state_dict)
    if any('logit_scale' in k or 'cpb_mlp' in k for k in keys):
        raise ValueError('this is a Swin V2 checkpoint (logit_scale / cpb_mlp); Dr2NetSwin is Swin V1')
    if any(k.startswith('stages.') or k.startswith('patch_embed.projection.') for k in keys):
        return 'mmdet'
    if any(k.startswith('layers.') for k in keys):
        if any(k.startswith('layers.0.downsample.') for k in keys):
            return 'official'
        if any(re.match(r'layers\.\d+\.downsample\.', k) for k in keys):
            return 'timm'
        return 'official'  # a single stage: both layouts agree
    raise ValueError('the checkpoint does not look like a Swin backbone (no stages.*/layers.* keys); '
                     f'first keys: {keys[:8]}')


def timm_to_official(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """timm (0.9+, 1.0) Swin layout -> official layout: ``layers.{N+1}.downsample`` ->
    ``layers.N.downsample`` (same tensors: timm's ``PatchMerging`` concatenates the 2×2 neighbours
    in the official order), the classifier (``head.*``) and the derived buffers dropped."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('head.') or key.endswith(DERIVED_BUFFERS):
            continue
        match = re.match(r'layers\.(\d+)\.downsample\.(.*)$', key)
        if match:
            key = f'layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}'
        out[key] = value
    return out


def official_to_mmdet(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official Swin layout -> mmdet layout with mmdet's own ``swin_converter`` (names, the unfold
    channel order of patch merging), without the ``backbone.`` prefix it adds; derived buffers and the
    classifier dropped."""
    converted = swin_converter(OrderedDict(
        (k, v) for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFERS)))
    return OrderedDict((k[len('backbone.'):], v) for k, v in converted.items())


def resize_rel_pos_bias_table(table: Tensor, length: int) -> Tensor:
    """A ``((2W-1)², heads)`` relative position bias table resized to ``length`` rows (another window
    size), bicubic on the ``(2W-1)×(2W-1)`` grid as mmdet's ``init_weights`` does
    (``timm.layers.resize_rel_pos_bias_table_simple``)."""
    old_len, heads = table.shape
    s_old, s_new = int(round(math.sqrt(old_len))), int(round(math.sqrt(length)))
    if s_old * s_old != old_len or s_new * s_new != length or s_new % 2 == 0:
        raise ValueError(f'cannot resize a relative position table of {old_len} rows to {length}')
    window = (s_new + 1) // 2
    resized = resize_rel_pos_bias_table_simple(table.float(), (window, window), (length, heads))
    return resized.contiguous().to(table.dtype)


def resize_abs_pos_embed(pos: Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> Tensor:
    """Absolute position embedding ``(1, H·W, C)`` on an ``src_hw`` grid, resized bicubic to
    ``dst_hw`` (``timm.layers.resample_abs_pos_embed`` without antialiasing, as mmdet)."""
    return resample_abs_pos_embed(pos, new_size=list(dst_hw), old_size=list(src_hw),
                                  num_prefix_tokens=0, antialias=False)


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional['Dr2NetSwin'] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported Swin checkpoint -> a state dict in Dr2NetSwin's (= mmdet's) layout.

    Accepts an official release file, timm's ``swin_*`` state dicts, mmdet/mmseg detector or segmentor
    checkpoints (keys under ``backbone.``) and bare backbone state dicts (see
    :func:`detect_checkpoint_format`). Derived buffers (``relative_position_index``, ``attn_mask``) are
    dropped: the model computes its own. With ``model``: relative position bias tables are resized
    (bicubic) to the model's window size and the absolute position embedding to its patch grid.
    """
    state_dict = unwrap_state_dict(checkpoint, prefix)
    fmt = detect_checkpoint_format(state_dict)
    if fmt == 'timm':
        state_dict = timm_to_official(state_dict)
    if fmt in ('timm', 'official'):
        state_dict = official_to_mmdet(state_dict)
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFERS))
    if model is not None:
        state_dict = _adapt_to_model(state_dict, model, logger)
    return state_dict


def _adapt_to_model(state_dict: Dict[str, Tensor], model: nn.Module,
                    logger: Optional[logging.Logger]) -> Dict[str, Tensor]:
    own = model.state_dict()
    out = OrderedDict()
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and value.shape != target.shape:
            if key.endswith('relative_position_bias_table') and value.shape[1] == target.shape[1]:
                print_log(f'resizing {key} from {tuple(value.shape)} to {tuple(target.shape)} '
                          '(another window size, bicubic)', logger=logger, level=logging.INFO)
                value = resize_rel_pos_bias_table(value, target.shape[0])
            elif key == 'absolute_pos_embed' and value.dim() in (3, 4):
                if value.dim() == 4:  # (1, C, H, W), an older layout
                    src_hw = tuple(value.shape[2:])
                    value = value.flatten(2).transpose(1, 2)
                else:  # (1, H·W, C) on a square grid
                    side = int(round(math.sqrt(value.shape[1])))
                    src_hw = (side, side)
                if src_hw[0] * src_hw[1] == value.shape[1] and value.shape[2] == target.shape[2]:
                    print_log(f'resizing absolute_pos_embed from a {src_hw} to a '
                              f'{model.pos_embed_grid} patch grid (bicubic)', logger=logger,
                              level=logging.INFO)
                    value = resize_abs_pos_embed(value, src_hw, model.pos_embed_grid)
        out[key] = value
    return out
