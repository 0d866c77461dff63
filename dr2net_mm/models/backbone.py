"""What every Dr²Net backbone shares: the (α, β) / mode / monitor interface over its reversible
stages (:class:`Dr2NetBackboneMixin`) and pretrained loading (checkpoint unwrapping, the deprecated
``pretrained=`` argument, :class:`LoadReport`)."""
import logging
import pickle
import re
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor

from ..checks import check_bool, check_segment_size, parse_stream_dtype
from ..core import ReversibleSequence, check_coefficients

def pretrained_init_cfg(pretrained: Optional[str], init_cfg: Optional[dict]) -> Optional[dict]:
    """The ``init_cfg`` for the deprecated ``pretrained=PATH`` argument that mmdet/mmseg configs
    still pass (e.g. an ``EncoderDecoder`` with ``pretrained``)."""
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
    if init_cfg is not None:
        raise ValueError('init_cfg and pretrained cannot be specified at the same time')
    return dict(type='Pretrained', checkpoint=pretrained)


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


def _first(keys: List[str], count: int = 5) -> str:
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


class Dr2NetBackboneMixin:
    """(α, β) as persistent float64 buffers ``alpha``/``beta`` mirrored in every reversible stage,
    the stages' mode switches, their reconstruction-error monitor, and pretrained loading.

    A backbone defines ``sequences`` (the :class:`ReversibleSequence` of each of its stages, in
    order) and the two checkpoint functions ``detect_format(state_dict) -> str`` and
    ``filter_checkpoint(checkpoint, model, prefix, logger) -> state_dict``, and calls
    :meth:`_register_coefficients` once in ``__init__``, after building its stages. It may name the
    buffers it computes itself (:meth:`_derived_buffers`): a state dict without them still loads.

    (α, β) are validated in one place, by each stage (:func:`~dr2net_mm.core.check_coefficients`:
    [0, 1], β > 0 when reversible); this class only copies the validated values to its buffers.
    """
    detect_format: Callable[[Mapping[str, Tensor]], str]
    filter_checkpoint: Callable[..., Dict[str, Tensor]]

    @property
    def sequences(self) -> List[ReversibleSequence]:
        raise NotImplementedError

    @property
    def engines(self) -> List[ReversibleSequence]:
        """Deprecated name of :attr:`sequences`."""
        warnings.warn('engines is deprecated; use sequences (or dr2net_mm.core.reversible_stages)',
                      DeprecationWarning, stacklevel=2)
        return self.sequences

    # --------------------------------------------------------------------------- coefficients
    def _register_coefficients(self) -> None:
        """The ``alpha``/``beta`` buffers, holding the (already validated) values of the stages."""
        first = self.sequences[0]
        self.register_buffer('alpha', torch.tensor(first.alpha, dtype=torch.float64))
        self.register_buffer('beta', torch.tensor(first.beta, dtype=torch.float64))
        self._coefficients = (first.alpha, first.beta)
        self._synced_buffers = self._buffer_versions()

    @property
    def coefficients(self) -> Tuple[float, float]:
        """The current (α, β) as Python floats."""
        self._sync_coefficients()
        return self._coefficients

    def set_coefficients(self, alpha: float, beta: float) -> None:
        """Set (α, β) in every stage (validated there: [0, 1], β > 0 when reversible) and in the
        buffers."""
        self._set_coefficients(alpha, beta)

    def _set_coefficients(self, alpha: float, beta: float) -> None:
        # A reversible stage goes first, so an invalid pair (e.g. β = 0) is refused before any
        # stage changes. The stages convert the values (e.g. buffer tensors) to floats.
        stages = sorted(self.sequences, key=lambda stage: not stage.reversible)
        for stage in stages:
            stage.set_coefficients(alpha, beta)
        alpha, beta = stages[0].alpha, stages[0].beta
        with torch.no_grad():
            self.alpha.fill_(alpha)
            self.beta.fill_(beta)
        self._coefficients = (alpha, beta)
        self._synced_buffers = self._buffer_versions()

    def _buffer_versions(self) -> Tuple[int, ...]:
        return (id(self.alpha), self.alpha._version, id(self.beta), self.beta._version)

    def _sync_coefficients(self) -> None:
        """Follow writes to the ``alpha``/``beta`` buffers made without :meth:`set_coefficients`
        (an EMA model copying buffers, DDP broadcasting them, ``.to(device)``): a version counter tells
        whether they were written; only then are they read (one device sync) and validated."""
        if self._buffer_versions() != self._synced_buffers:
            self._set_coefficients(self.alpha, self.beta)

    def _any_reversible(self) -> bool:
        return any(stage.reversible for stage in self.sequences)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # α/β may be absent (an mmdet / mmseg / mmaction2 / timm checkpoint): the current values
        # stay. So may the buffers the model derives itself (:meth:`_derived_buffers`): its own stay.
        coefficients = self._take_coefficients(state_dict, prefix, error_msgs)
        for name, buffer in self._derived_buffers():
            if prefix + name not in state_dict:
                state_dict[prefix + name] = buffer
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if coefficients is not None:
            self._set_coefficients(*coefficients)

    def _derived_buffers(self) -> List[Tuple[str, Tensor]]:
        """(name, buffer) of the buffers a checkpoint may lack because the model computes them
        (relative position indices, a fixed sinusoid table, ...); none by default."""
        return []

    def _take_coefficients(self, state_dict: dict, prefix: str,
                           error_msgs: List[str]) -> Optional[Tuple[float, float]]:
        """For ``_load_from_state_dict``: the (α, β) a state dict brings, validated (None when it has
        none, e.g. an mmdet/timm checkpoint: the current values stay and the keys are filled in, so
        ``strict`` loading works). Invalid values are reported in ``error_msgs`` and not loaded."""
        loaded = {}
        for name in ('alpha', 'beta'):
            if prefix + name in state_dict:
                loaded[name] = state_dict[prefix + name]
            else:
                state_dict[prefix + name] = getattr(self, name)
        if not loaded:
            return None
        try:
            return check_coefficients(loaded.get('alpha', self._coefficients[0]),
                                      loaded.get('beta', self._coefficients[1]),
                                      self._any_reversible())
        except (TypeError, ValueError) as error:
            error_msgs.append(f'{prefix}alpha/{prefix}beta: {error}')
            for name in loaded:
                state_dict[prefix + name] = getattr(self, name)
            return None

    # --------------------------------------------------------------------------- modes, monitor
    @property
    def reversible(self) -> bool:
        """True when every stage is reversible (settable, validated against β by the stages; the
        core's ``set_reversible(model, flag)`` also works)."""
        return all(stage.reversible for stage in self.sequences)

    @reversible.setter
    def reversible(self, value: bool) -> None:
        value = check_bool('reversible', value)
        for stage in self.sequences:  # all stages hold the same β: the first refuses β = 0
            stage.reversible = value

    @property
    def stream_dtype(self) -> Union[torch.dtype, str]:
        return self.sequences[0].stream_dtype

    @stream_dtype.setter
    def stream_dtype(self, value: Union[torch.dtype, str]) -> None:
        value = parse_stream_dtype(value)
        for stage in self.sequences:
            stage.stream_dtype = value

    @property
    def segment_size(self) -> Optional[int]:
        return self.sequences[0].segment_size

    @segment_size.setter
    def segment_size(self, value: Optional[int]) -> None:
        value = check_segment_size(value)
        for stage in self.sequences:
            stage.segment_size = value

    def reconstruction_errors(self) -> List[Optional[float]]:
        """Per stage, the worst relative reconstruction error of its latest reversible backward (None
        for a stage that has not run one, e.g. frozen or reference mode). Reading it syncs the
        device."""
        return [stage.reconstruction_error() for stage in self.sequences]

    def reconstruction_ok(self) -> bool:
        """False when a stage's latest reversible backward rebuilt non-finite or too imprecise
        streams (the caller may skip that optimizer step)."""
        return all(stage.reconstruction_ok() for stage in self.sequences)

    # --------------------------------------------------------------------------- weights
    def load_pretrained_cfg(self, cfg: Mapping[str, Any]) -> LoadReport:
        """:meth:`load_pretrained` from an ``init_cfg=dict(type='Pretrained', checkpoint=...,
        prefix=None, map_location='cpu', allow_partial=False)``."""
        if 'checkpoint' not in cfg:
            raise ValueError(f"{type(self).__name__}: init_cfg=dict(type='Pretrained') needs a "
                             f'checkpoint, got {dict(cfg)!r}')
        return self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'),
                                    map_location=cfg.get('map_location', 'cpu'),
                                    allow_partial=cfg.get('allow_partial', False))

    def load_pretrained(self, checkpoint: Union[str, Mapping[str, Any]], prefix: Optional[str] = None,
                        map_location: str = 'cpu', allow_partial: bool = False) -> LoadReport:
        """Load pretrained weights from a file name/URL or a loaded checkpoint dict; logs and returns
        what was loaded, missing, unexpected or skipped for a shape mismatch.

        Refuses (``ValueError`` naming the file and both architectures) when less than
        :data:`MIN_LOADED_SHARE` of the backbone's parameter values come from the checkpoint (e.g. a
        Swin-B file for a Swin-T model), unless ``allow_partial=True``."""
        allow_partial = check_bool('allow_partial', allow_partial)
        logger = MMLogger.get_current_instance()
        source = checkpoint if isinstance(checkpoint, str) else 'a checkpoint dict'
        if isinstance(checkpoint, str):
            try:
                checkpoint = CheckpointLoader.load_checkpoint(checkpoint, logger=logger,
                                                              map_location=map_location)
            except pickle.UnpicklingError as exc:  # torch >= 2.6 loads weights only by default
                raise ValueError(
                    f'pretrained checkpoint {checkpoint!r} holds Python objects besides tensors '
                    f'(e.g. an MMEngine training checkpoint), which torch refuses to unpickle '
                    f'with weights_only=True. If you trust the file, save its weights alone: '
                    f'torch.save(torch.load(PATH, weights_only=False)["state_dict"], NEW_PATH). '
                    f"torch said: {str(exc).strip().splitlines()[0]}") from exc
        fmt = type(self).detect_format(unwrap_state_dict(checkpoint, prefix))
        state_dict = type(self).filter_checkpoint(checkpoint, self, prefix=prefix, logger=logger)
        checkpoint_layout = describe_layout(state_dict)
        own = self.state_dict()
        mismatched = [k for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
        for key in mismatched:
            state_dict.pop(key)
        result = self.load_state_dict(state_dict, strict=False)
        report = LoadReport(fmt, list(result.missing_keys), list(result.unexpected_keys), mismatched)
        loaded = [k for k in state_dict if k in own]
        params = dict(self.named_parameters())
        total = sum(p.numel() for p in params.values())
        share = sum(params[k].numel() for k in loaded if k in params) / max(total, 1)
        name = type(self).__name__
        print_log(f'{name}: loaded {len(loaded)} tensors ({share:.1%} of the parameter values) from '
                  f'{source} ({fmt} layout); missing {len(report.missing_keys)}, unexpected '
                  f'{len(report.unexpected_keys)}, shape-mismatched {len(mismatched)}',
                  logger=logger, level=logging.INFO)
        for what, keys in (('missing keys (left as initialised)', report.missing_keys),
                           ('unused checkpoint keys', report.unexpected_keys),
                           ('skipped keys with mismatched shapes', mismatched)):
            if keys:
                print_log(f'{name}: {len(keys)} {what}: {_first(keys)}', logger=logger,
                          level=logging.WARNING)
        if share < MIN_LOADED_SHARE and not allow_partial:
            raise PretrainedMismatchError(
                f'{name}: only {share:.1%} of the backbone\'s parameter values loaded from {source} '
                f'(needs {MIN_LOADED_SHARE:.0%}): the checkpoint is {checkpoint_layout}, the model is '
                f'{describe_layout(own)} ({len(loaded)} tensors loaded, '
                f'{len(report.missing_keys)} missing, {len(report.unexpected_keys)} unexpected, '
                f'{len(mismatched)} shape-mismatched; first mismatched: {_first(mismatched)}). Use '
                'the checkpoint of this architecture, or set allow_partial=True in the backbone\'s '
                "init_cfg=dict(type='Pretrained', ...) to train from a partial load.")
        return report
