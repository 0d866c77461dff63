"""Reading pretrained checkpoints for any Dr²Net backbone: the ``pretrained=`` argument, the
backbone's tensors of a checkpoint file (:func:`unwrap_state_dict`), what a load did
(:class:`LoadReport`) and when it is refused (:class:`PretrainedMismatchError`)."""
import logging
import pickle
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union

from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor

__all__ = ['pretrained_init_cfg', 'read_checkpoint', 'unwrap_state_dict', 'describe_layout',
           'LoadReport', 'PretrainedMismatchError', 'MIN_LOADED_SHARE', 'first_keys']


def pretrained_init_cfg(pretrained: Optional[str], init_cfg: Any,
                        default_init_cfg: Any = None) -> Any:
    """The ``init_cfg`` that the deprecated ``pretrained=PATH`` argument stands for,
    ``dict(type='Pretrained', checkpoint=PATH)`` (mmdet/mmseg/mmaction2 configs still pass it, e.g.
    an ``EncoderDecoder`` with ``pretrained``); refused beside an ``init_cfg`` other than the
    framework model's default."""
    if pretrained is None or pretrained == '':
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
    if init_cfg is not None and init_cfg != default_init_cfg:
        raise ValueError(f'init_cfg and pretrained cannot be specified at the same time (got '
                         f'pretrained={pretrained!r}, init_cfg={init_cfg!r}); give the checkpoint '
                         "as init_cfg=dict(type='Pretrained', checkpoint=...) alone")
    return dict(type='Pretrained', checkpoint=pretrained)


def read_checkpoint(checkpoint: Union[str, Mapping[str, Any]], map_location: str,
                    logger: logging.Logger) -> Mapping[str, Any]:
    """A checkpoint file name/URL read with mmengine's ``CheckpointLoader`` (a loaded checkpoint
    dict is returned as it is); a file of pickled Python objects, which torch >= 2.6 refuses by
    default, is refused with what to do."""
    if not isinstance(checkpoint, str):
        return checkpoint
    try:
        return CheckpointLoader.load_checkpoint(checkpoint, logger=logger, map_location=map_location)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f'pretrained checkpoint not found: init_cfg.checkpoint={checkpoint!r} (the backbone\'s '
            "init_cfg=dict(type='Pretrained', checkpoint=...), or its pretrained= argument). Point it "
            'at the file, e.g. --cfg-options model.backbone.init_cfg.checkpoint=PATH, or train from '
            'random weights with model.backbone.init_cfg=None') from exc
    except pickle.UnpicklingError as exc:  # torch >= 2.6 loads weights only by default
        raise ValueError(
            f'pretrained checkpoint {checkpoint!r} holds Python objects besides tensors '
            f'(e.g. an MMEngine training checkpoint), which torch refuses to unpickle '
            f'with weights_only=True. If you trust the file, save its weights alone: '
            f'torch.save(torch.load(PATH, weights_only=False)["state_dict"], NEW_PATH). '
            f"torch said: {str(exc).strip().splitlines()[0]}") from exc


def unwrap_state_dict(checkpoint: Mapping[str, Any], prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """The backbone's tensors of a loaded checkpoint file, prefixes removed.

    Takes ``checkpoint['state_dict']`` (mmengine/mmdet/mmseg/mmpretrain), ``checkpoint['model']``
    (official Swin, DeiT, MAE and VideoMAE releases), ``checkpoint['module']`` (DeepSpeed, e.g.
    VideoMAE) or the mapping itself; strips a ``module.`` prefix (DDP);
    with ``prefix`` keeps only keys under it (stripped); otherwise, when some keys start with
    ``backbone.`` (a detector, segmentor or classifier checkpoint), keeps only those (stripped).
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if isinstance(v, Tensor))
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = OrderedDict((k[7:], v) for k, v in state_dict.items())
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        selected = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                               if k.startswith(prefix))
        if not selected:
            raise ValueError(f'no key of the checkpoint starts with prefix {prefix!r}; first keys: '
                             f'{list(state_dict)[:5]}')
        return selected
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = OrderedDict((k[9:], v) for k, v in state_dict.items() if k.startswith('backbone.'))
    return state_dict


# load_pretrained refuses a checkpoint that provides less than this share of the parameter values
MIN_LOADED_SHARE = 0.5


class PretrainedMismatchError(ValueError):
    """A pretrained checkpoint that does not fit the backbone (too little of it loads)."""


def describe_layout(state_dict: Mapping[str, Tensor]) -> str:
    """The width and depth a backbone state dict implies: the patch (2-D) or tubelet (3-D)
    embedding's output channels and the number of blocks per stage (``stages.N.blocks.M.``,
    ``layers.N.blocks.M.`` or ``blocks.M.`` keys)."""
    widths = [v.shape[0] for k, v in state_dict.items()
              if k.startswith('patch_embed.') and k.endswith('weight') and v.dim() in (4, 5)]
    depths: Dict[int, int] = {}
    for key in state_dict:
        match = re.match(r'(?:(?:stages|layers)\.(\d+)\.)?blocks\.(\d+)\.', key)
        if match:
            stage = int(match.group(1) or 0)
            depths[stage] = max(depths.get(stage, 0), int(match.group(2)) + 1)
    width = widths[0] if widths else 'unknown'
    return f'embed_dims={width}, blocks per stage {tuple(depths[i] for i in sorted(depths))}'


def first_keys(keys: List[str], count: int = 5) -> str:
    if not keys:
        return 'none'
    return ', '.join(keys[:count]) + (f', ... ({len(keys) - count} more)' if len(keys) > count else '')


class LoadReport(NamedTuple):
    """What ``load_pretrained`` did: the detected source ``format``, the model's keys the checkpoint
    did not provide (``missing_keys``), the checkpoint keys the model has no use for
    (``unexpected_keys``) and keys skipped because their shapes differ (``mismatched_keys``)."""
    format: str
    missing_keys: List[str]
    unexpected_keys: List[str]
    mismatched_keys: List[str]
