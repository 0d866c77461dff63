"""Checkpoint conversion for Dr2NetSwin3D (pure functions: inputs are never modified).

Dr2NetSwin3D has mmaction2's ``SwinTransformer3D`` state dict (``patch_embed.proj``,
``layers.N.blocks.M.{norm1,attn,norm2,mlp}``, ``layers.N.downsample``, ``norm{i}``), so 3D
checkpoints (mmaction2 recognizers, bare backbones) load as they are. 2D Swin image checkpoints
(the official release, also timm's layout) are *inflated* the way mmaction2's
``SwinTransformer3D.inflate_weights`` does it (:func:`inflate_2d_state_dict`).
"""
import logging
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .pretrained import unwrap_state_dict
from .swin_checkpoint import DERIVED_BUFFERS, timm_to_official

__all__ = ['detect_checkpoint_format', 'inflate_2d_state_dict', 'checkpoint_filter_fn',
           'DERIVED_BUFFERS']


def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which layout ``state_dict`` (prefixes already removed) is in:

    * ``'mmaction'``: a Video Swin state dict (mmaction2's ``SwinTransformer3D``, also
      Dr2NetSwin3D's own): ``patch_embed.proj.weight`` is a 5-d ``Conv3d`` kernel;
    * ``'official2d'``: a 2D Swin image checkpoint in the official release layout (``layers.N.*``
      with patch merging ``layers.N.downsample`` at the end of stage N, a 4-d patch kernel);
    * ``'timm2d'``: a 2D Swin in timm 0.9+/1.0 layout (patch merging at the start of stage N+1).

    Raises ``ValueError`` for anything else (an mmdet-layout 2D Swin, Swin V2, other networks).
    """
    keys = list(state_dict)
    if any('logit_scale' in k or 'cpb_mlp' in k for k in keys):
        raise ValueError('this is a Swin V2 checkpoint (logit_scale / cpb_mlp); Dr2NetSwin3D is '
                         'Video Swin (Swin V1 blocks)')
    if any(k.startswith('stages.') for k in keys):
        raise ValueError('this is a 2D Swin in mmdet/mmseg layout (stages.N.*); inflate the official '
                         'release file (layers.N.*) instead')
    patch = state_dict.get('patch_embed.proj.weight')
    if patch is None or not any(k.startswith('layers.') for k in keys):
        raise ValueError('the checkpoint does not look like a Swin backbone (no patch_embed.proj / '
                         f'layers.* keys); first keys: {keys[:8]}')
    if patch.dim() == 5:
        return 'mmaction'
    if patch.dim() != 4:
        raise ValueError(f'patch_embed.proj.weight has shape {tuple(patch.shape)}; expected a 4-d '
                         '(2D Swin) or 5-d (Video Swin) kernel')
    if any(k.startswith('layers.0.downsample.') for k in keys):
        return 'official2d'
    if any(re.match(r'layers\.\d+\.downsample\.', k) for k in keys):
        return 'timm2d'
    return 'official2d'  # a single stage: both layouts agree


def _triple(size: Union[int, Sequence[int]]) -> tuple:
    return (size, ) * 3 if isinstance(size, int) else tuple(size)


def inflate_2d_state_dict(state_dict: Mapping[str, Tensor], model_state_dict: Mapping[str, Tensor],
                          patch_size: Union[int, Sequence[int]], window_size: Sequence[int],
                          logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """A 2D Swin state dict (official layout, prefixes removed) inflated to a Video Swin with
    ``model_state_dict``'s keys, as mmaction2's ``SwinTransformer3D.inflate_weights``:

    * ``relative_position_index`` / ``attn_mask`` buffers dropped (the model computes its own);
    * ``patch_embed.proj.weight`` ``(C, 3, p, p)`` -> ``(C, 3, pt, p, p)``: repeated over time and
      divided by ``pt = patch_size[0]``;
    * every ``relative_position_bias_table`` ``((2Wh-1)(2Ww-1), heads)``: resized bicubic
      (``F.interpolate``, as mmaction2) to the model's ``(2·wh-1, 2·ww-1)`` grid when its length
      differs, then repeated ``2·wd-1`` times along the rows (a table whose head count differs from
      the model's is left as it is: loading then reports it as shape-mismatched);
    * ``norm.*`` (the final norm of the 2D network) -> ``norm3.*`` when the model has ``norm3``.

    Differences from mmaction2, none in the loaded values: the classifier (``head.*``) is dropped
    here rather than reported as unexpected by ``load_state_dict``.
    """
    patch_size, window_size = _triple(patch_size), tuple(window_size)
    out = OrderedDict((k, v) for k, v in state_dict.items()
                      if not k.endswith(DERIVED_BUFFERS) and not k.startswith('head.'))
    key = 'patch_embed.proj.weight'
    if key in out:
        out[key] = out[key].unsqueeze(2).repeat(1, 1, patch_size[0], 1, 1) / patch_size[0]
    wd, wh, ww = window_size
    length = (2 * wh - 1) * (2 * ww - 1)
    for key in [k for k in out if k.endswith('relative_position_bias_table')]:
        table = out[key]
        target = model_state_dict.get(key)
        if target is None:
            continue  # not in the model: reported as unexpected
        L1, heads = table.shape
        if heads != target.shape[1]:
            if logger is not None:
                logger.warning(f'{key}: {heads} heads in the checkpoint, {target.shape[1]} in the '
                               'model; not inflated')
            continue
        if L1 != length:
            side = int(L1**0.5)
            table = F.interpolate(table.permute(1, 0).view(1, heads, side, side),
                                  size=(2 * wh - 1, 2 * ww - 1),
                                  mode='bicubic').view(heads, length).permute(1, 0)
        out[key] = table.repeat(2 * wd - 1, 1)
    if 'norm3.weight' in model_state_dict:
        for name in ('weight', 'bias'):
            if f'norm.{name}' in out:
                out[f'norm3.{name}'] = out.pop(f'norm.{name}')
    return out


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional[torch.nn.Module] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported checkpoint -> a state dict in Dr2NetSwin3D's (= mmaction2's) layout.

    Accepts mmaction2 recognizer checkpoints (keys under ``backbone.``), bare ``SwinTransformer3D``
    state dicts, and 2D Swin checkpoints (official ``{'model': ...}`` release files, timm state
    dicts), which are inflated with :func:`inflate_2d_state_dict` (this needs ``model``: its state
    dict, ``patch_size`` and ``window_size``). Derived buffers (``relative_position_index``,
    ``attn_mask``) are dropped: the model computes its own.
    """
    state_dict = unwrap_state_dict(checkpoint, prefix)
    fmt = detect_checkpoint_format(state_dict)
    if fmt == 'mmaction':
        return OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFERS))
    if model is None:
        raise ValueError('inflating a 2D Swin checkpoint needs the model (its patch and window size)')
    if fmt == 'timm2d':
        state_dict = timm_to_official(state_dict)
    return inflate_2d_state_dict(state_dict, model.state_dict(), model.patch_size,
                                 model.window_size, logger)
