"""VideoMAE checkpoints -> mmaction2's ``VisionTransformer`` layout (= Dr2NetVideoViT's): state dict
in -> state dict out; the input is never modified.

Layouts (see :func:`detect_checkpoint_format`):

* ``'mmaction'``: mmaction2's ``VisionTransformer`` (``patch_embed.projection``,
  ``blocks.N.mlp.layers.0.0`` / ``layers.1``), bare, or under ``backbone.`` in a recognizer
  checkpoint (whose ``cls_head.*`` is left behind);
* ``'videomae'``: the official VideoMAE release (MCG-NJU/VideoMAE ``modeling_finetune.py``:
  ``patch_embed.proj``, ``blocks.N.mlp.fc1`` / ``fc2``, ``fc_norm`` or ``norm``, ``head``);
* ``'videomae_pretrain'``: the official pretraining release (``modeling_pretrain.py``): the encoder
  under ``encoder.`` beside ``decoder.*``, ``encoder_to_decoder`` and ``mask_token``.

Official files hold their weights under ``model`` (or ``module``, DeepSpeed). The renaming is what
mmaction2's own converted VideoMAE checkpoints show: ``patch_embed.proj`` -> ``patch_embed.projection``,
``mlp.fc1`` -> ``mlp.layers.0.0`` (mmcv ``FFN``: Linear + activation in a Sequential), ``mlp.fc2`` ->
``mlp.layers.1``; every other name (``norm1``, ``attn.qkv``, ``attn.q_bias``, ``attn.v_bias``,
``attn.proj``, ``norm2``, ``gamma_1``, ``gamma_2``, ``pos_embed``, ``norm``, ``fc_norm``) is the same.
The tensors are unchanged. Classifier heads and the pretraining decoder are dropped (logged).

Given a model, the state dict is also fitted to it, as VideoMAE's own finetuning script loads a
pretrained encoder: a final ``norm`` is dropped when the model pools with ``fc_norm`` (mean pooling:
its ``norm`` is an Identity; ``fc_norm`` then keeps its initialisation) and vice versa; a fixed
sinusoid ``pos_embed`` (a buffer, absent from the official files, which do not register it) is taken
from the model; a stored ``pos_embed`` of another spatial grid is resized bicubically per frame
group (as the official script does) when the temporal length matches.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from .pretrained import unwrap_state_dict

__all__ = ['checkpoint_filter_fn', 'detect_checkpoint_format']

# Keys of the official releases that are not parts of the backbone.
_NON_BACKBONE = re.compile(r'^(head|fc_dropout|decoder|encoder_to_decoder|mask_token|cls_head)'
                           r'(\.|$)')

# official name (inside the state dict) -> mmaction name
_RENAMES = (
    (re.compile(r'^patch_embed\.proj\.'), 'patch_embed.projection.'),
    (re.compile(r'^(blocks\.\d+\.mlp\.)fc1\.'), r'\1layers.0.0.'),
    (re.compile(r'^(blocks\.\d+\.mlp\.)fc2\.'), r'\1layers.1.'),
)


def detect_checkpoint_format(state_dict: Mapping[str, Tensor]) -> str:
    """Which layout ``state_dict`` (``model`` / ``module`` / ``state_dict`` unwrapped, ``module.``
    and ``backbone.`` prefixes removed) is in: ``'mmaction'``, ``'videomae'`` or
    ``'videomae_pretrain'`` (see the module doc)."""
    keys = list(state_dict)
    if any(k.startswith('patch_embed.projection.') or re.match(r'blocks\.\d+\.mlp\.layers\.', k)
           for k in keys):
        return 'mmaction'
    if any(re.match(r'encoder\.(blocks\.\d+|patch_embed)\.', k) for k in keys):
        return 'videomae_pretrain'
    if any(k.startswith('patch_embed.proj.') or re.match(r'blocks\.\d+\.mlp\.fc[12]\.', k)
           for k in keys):
        return 'videomae'
    raise ValueError('the checkpoint does not look like a VideoMAE / mmaction2 VisionTransformer (no '
                     'patch_embed.projection / patch_embed.proj, blocks.N.mlp.* or encoder.* keys); '
                     f'first keys: {keys[:8]}')


def _convert(state_dict: Mapping[str, Tensor]) -> Tuple[str, Dict[str, Tensor], List[str]]:
    """(layout, the state dict in mmaction2's names, the input keys left out)."""
    fmt = detect_checkpoint_format(state_dict)
    out, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        name = key
        if fmt == 'videomae_pretrain':
            if not key.startswith('encoder.'):
                dropped.append(key)
                continue
            name = key[len('encoder.'):]
        if _NON_BACKBONE.match(name):
            dropped.append(key)
            continue
        if fmt != 'mmaction':
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
        out[name] = value
    return fmt, out, dropped


def _resize_pos_embed(pos: Tensor, frames: int, grid: tuple) -> Optional[Tensor]:
    """``pos`` ``(1, frames·g·g, C)`` -> ``(1, frames·h·w, C)`` for ``grid = (h, w)``, bicubic per
    frame group (VideoMAE's finetuning script); None when ``pos`` does not have ``frames`` groups of a
    square grid."""
    tokens, channels = pos.shape[1], pos.shape[2]
    if pos.dim() != 3 or tokens % frames:
        return None
    side = math.isqrt(tokens // frames)
    if side * side * frames != tokens:
        return None
    maps = pos.reshape(frames, side, side, channels).permute(0, 3, 1, 2).float()
    maps = F.interpolate(maps, size=tuple(grid), mode='bicubic', align_corners=False)
    return maps.permute(0, 2, 3, 1).reshape(1, -1, channels).to(pos.dtype)


def _fit_to_model(state_dict: Dict[str, Tensor], model: nn.Module, dropped: List[str],
                  logger: Optional[logging.Logger]) -> None:
    """Fit (in place) the final norms and the position embedding to ``model`` (an mmaction2
    ``VisionTransformer`` or a subclass)."""
    if isinstance(getattr(model, 'norm', None), nn.Identity):
        dropped += [k for k in state_dict if k.startswith('norm.')]
    if getattr(model, 'fc_norm', None) is None:
        dropped += [k for k in state_dict if k.startswith('fc_norm.')]
    for key in dropped:
        state_dict.pop(key, None)
    own = getattr(model, 'pos_embed', None)
    if not isinstance(own, Tensor):
        return
    fixed = not isinstance(own, nn.Parameter)  # the sinusoid table: derived from the architecture
    pos = state_dict.get('pos_embed')
    if pos is None and fixed:
        state_dict['pos_embed'] = own.detach().clone()
        print_log('VideoMAE checkpoint filter: no pos_embed in the checkpoint; the model\'s fixed '
                  'sinusoid table is used (as VideoMAE builds it)', logger=logger,
                  level=logging.INFO)
    elif pos is not None and pos.shape != own.shape:
        if fixed:
            state_dict['pos_embed'] = own.detach().clone()
            note = 'the model\'s own sinusoid table is used'
        else:
            patch_weight = model.patch_embed.projection.weight
            frames = own.shape[1] // (model.grid_size[0] * model.grid_size[1])
            resized = _resize_pos_embed(pos, frames, model.grid_size) \
                if patch_weight.dim() == 5 else None
            if resized is None or resized.shape != own.shape:
                return  # left as it is: reported as shape-mismatched by the loader
            state_dict['pos_embed'] = resized
            note = f'resized bicubically to the {tuple(model.grid_size)} grid per frame group'
        print_log(f'VideoMAE checkpoint filter: pos_embed {tuple(pos.shape)} != the model\'s '
                  f'{tuple(own.shape)}; {note}', logger=logger, level=logging.INFO)


def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: Optional[nn.Module] = None,
                         prefix: Optional[str] = None,
                         logger: Optional[logging.Logger] = None) -> Dict[str, Tensor]:
    """Any supported checkpoint (see :func:`detect_checkpoint_format`) -> a state dict in mmaction2's
    ``VisionTransformer`` layout: an official VideoMAE file (``model`` / ``module``), a pretraining
    file (``encoder.`` kept, decoder dropped), an mmaction2 recognizer checkpoint (``backbone.``) or a
    bare backbone state dict. With ``model`` (an mmaction2 ``VisionTransformer`` or
    ``Dr2NetVideoViT``), also fitted to it (module doc). The input is not modified."""
    fmt, converted, dropped = _convert(unwrap_state_dict(checkpoint, prefix))
    fitted: List[str] = []
    if model is not None:
        _fit_to_model(converted, model, fitted, logger)
    dropped += fitted
    if dropped:
        print_log(f'VideoMAE checkpoint filter ({fmt} layout): dropped {len(dropped)} keys of parts '
                  f'the backbone does not have ({sorted({k.split(".")[0] for k in dropped})})',
                  logger=logger, level=logging.INFO)
    return converted
