"""What every Dr²Net backbone shares (:class:`Dr2NetBackboneMixin`): Eq. 1 and the Dr²Net arguments,
their checks, (α, β) as buffers mirrored in every reversible stage, the stages' modes and monitor,
``init_weights`` and pretrained loading; and the conventional baseline of a one-stage backbone
(:class:`ConventionalMixin`)."""
import logging
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional,
                    Tuple, Union)

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModule
from torch import Tensor

from ..branches import StageOptions, checkpoint_branches, checkpointed, stage_options
from ..checks import ArgumentTypeError, check_bool, check_segment_size, parse_stream_dtype
from ..core import ReversibleSequence, check_coefficients
from .pretrained import (MIN_LOADED_SHARE, LoadReport, PretrainedMismatchError, describe_layout,
                         first_keys, pretrained_init_cfg, read_checkpoint, unwrap_state_dict)

__all__ = ['Dr2NetBackboneMixin', 'Dr2NetArguments', 'ConventionalMixin', 'MMACTION_INIT_CFG']

# The default init_cfg of mmaction2's backbones (the same value: the signatures compare equal)
MMACTION_INIT_CFG = [
    dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
]


class Dr2NetArguments(NamedTuple):
    """A backbone's Dr²Net arguments, checked: the options of its stages, ``with_cp``, and its
    ``init_cfg`` (with ``pretrained=PATH`` turned into one)."""
    stage: StageOptions
    with_cp: bool
    init_cfg: Any


class Dr2NetBackboneMixin:
    """What every Dr²Net backbone shares, put first among the bases of a framework model
    (``class Dr2NetSwin(Dr2NetBackboneMixin, SwinTransformer)``).

    **Eq. 1** (Zhao et al., CVPR 2024). Each stage of the framework model is a chain of residual
    branches ``F_i`` (every block an attention branch, then an MLP branch: ``2·depth`` of them; the
    backbone's module docstring defines them). Dr²Net runs the chain as::

        x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1},   y_i = β·x_{i-1},   (x_0, y_0) = (x_0, β·x_0)

    (``F_i`` also takes the stage's extra argument, e.g. Swin's ``hw_shape``) and the stage outputs
    ``x_i`` where the framework model has block outputs. At (α, β) = (1, 0) this is the framework
    model exactly; for β > 0 every step is invertible (Eq. 2), so in training the backward rebuilds a
    stage's activations from its final streams instead of keeping them
    (:class:`~dr2net_mm.core.ReversibleSequence`). The paper finetunes from (1, 0.1) towards e.g.
    (0.3, 0.7) (:meth:`set_coefficients`, e.g. from ``AlphaBetaHook``).

    **The Dr²Net arguments** (after the framework model's own, whose meaning is unchanged):

    * ``alpha``, ``beta``: the coefficients in [0, 1] (β > 0 when ``reversible``), checked by each
      stage (:func:`~dr2net_mm.core.check_coefficients`). Kept as persistent float64 buffers
      ``alpha``/``beta``, so checkpoints carry them: loading a state dict sets every stage to its
      values, one without them (the framework's) keeps the current ones. Change them with
      :meth:`set_coefficients`; other in-place writes to the buffers (an EMA copy) are picked up at
      the next forward.
    * ``reversible``: True: in training with gradients a stage keeps only its final streams and
      rebuilds activations in backward (Eq. 2). False: ordinary autograd (the exact reference, also
      the mode for β = 0). In eval mode or under ``torch.no_grad()`` the forward is a plain loop
      either way (no bookkeeping, as fast as the framework model).
    * ``stream_dtype``: the streams in training: ``'exact'`` (default: fixed point with an exact β
      buffer, bit-exact rebuilds at any (α, β), values within |x| < 2^21), ``torch.float64`` or
      ``torch.float32`` (or their names), whose rebuilds amplify rounding by ~(‖J‖ + α)/β per branch,
      large near the start point (1, 0.1) unless ``segment_size`` is small.
    * ``segment_size``: keep the streams every ``segment_size`` branches of a stage (two per block),
      bounding that amplification at one stream pair each; None (default): once per stage, all that
      exact streams need.
    * ``with_cp`` (where the framework model has it): in reference mode each branch is recomputed in
      backward (:func:`~dr2net_mm.branches.checkpoint_branches`), the framework's memory-light exact
      training; a reversible stage keeps no per-branch activations, so there it has no effect
      (logged once at construction).
    * ``pretrained``: a checkpoint path, an alias of ``init_cfg=dict(type='Pretrained',
      checkpoint=pretrained)`` (:meth:`init_weights`).

    **A backbone** checks its arguments with :meth:`_check_arguments` before building the framework
    model, builds its stages (:func:`~dr2net_mm.branches.branch_sequence`), then calls
    :meth:`_register_dr2net`. It defines ``sequences`` (the :class:`ReversibleSequence` of each stage,
    in order), the checkpoint functions ``detect_format(state_dict) -> str`` and
    ``filter_checkpoint(checkpoint, model, prefix, logger) -> state_dict``, and :attr:`scratch_init`;
    it may name the buffers it computes itself (:attr:`derived_buffers`), which a state dict may lack.
    """
    detect_format: Callable[[Mapping[str, Tensor]], str]
    filter_checkpoint: Callable[..., Dict[str, Tensor]]
    #: How :meth:`init_weights` initialises without a checkpoint, called with the model: the
    #: framework model's own ``init_weights``, mmengine's ``BaseModule.init_weights`` (runs
    #: ``init_cfg``), or None (the framework initialised the model when it was built, as timm does).
    scratch_init: Optional[Callable[[Any], None]] = None
    #: Name endings of the buffers the model computes itself (relative position indices, a fixed
    #: sinusoid table, ...): a state dict without them still loads (the model's own stay).
    derived_buffers: Tuple[str, ...] = ()

    @property
    def sequences(self) -> List[ReversibleSequence]:
        raise NotImplementedError

    # --------------------------------------------------------------------------- construction
    @staticmethod
    def _check_arguments(alpha: float, beta: float, reversible: bool,
                         stream_dtype: Union[torch.dtype, str], segment_size: Optional[int],
                         with_cp: bool = False, pretrained: Optional[str] = None,
                         init_cfg: Any = None, default_init_cfg: Any = None) -> Dr2NetArguments:
        """The Dr²Net arguments (class docstring), checked before the framework model is built.
        ``default_init_cfg``: the framework's default ``init_cfg``, which ``pretrained`` replaces."""
        return Dr2NetArguments(stage_options(alpha, beta, reversible, stream_dtype, segment_size),
                               check_bool('with_cp', with_cp),
                               pretrained_init_cfg(pretrained, init_cfg, default_init_cfg))

    @staticmethod
    def _check_stage_lists(lists: Mapping[str, Any], longer_ok: Tuple[str, ...] = ()) -> None:
        """Per-stage arguments (``name -> value``, the first one counting the stages, e.g. ``depths``)
        must have one entry per stage; those in ``longer_ok`` may have more (mmdet reads ``strides``
        by stage and ignores the rest). Raises naming every argument that disagrees and its length."""
        for name, value in lists.items():
            if not isinstance(value, (tuple, list)):
                raise ArgumentTypeError(f'{name} must be a list or tuple with one entry per stage, '
                                        f'got {value!r}')
        (first, stages), *others = lists.items()
        bad = [f'{name}={tuple(value)} has {len(value)}' for name, value in others
               if len(value) < len(stages) or (len(value) > len(stages) and name not in longer_ok)]
        if bad:
            raise ValueError(f'{first}={tuple(stages)} has {len(stages)} entries, one per stage, '
                             f'but {"; ".join(bad)}: give every per-stage argument one entry per '
                             'stage')

    def _register_dr2net(self, with_cp: bool = False) -> None:
        """Once the stages are built: the ``alpha``/``beta`` buffers (holding the values the stages
        checked) and ``with_cp``."""
        first = self.sequences[0]
        self.register_buffer('alpha', torch.tensor(first.alpha, dtype=torch.float64))
        self.register_buffer('beta', torch.tensor(first.beta, dtype=torch.float64))
        self._coefficients = (first.alpha, first.beta)
        self._synced_buffers = self._buffer_versions()
        self.with_cp = with_cp
        if with_cp and first.reversible:
            print_log(f'{type(self).__name__}: with_cp=True has no effect while reversible=True (a '
                      'reversible stage keeps no per-block activations); it applies in reference '
                      'mode only', logger='current', level=logging.INFO)

    # --------------------------------------------------------------------------- coefficients
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
        # stay. So may the buffers the model derives itself (:attr:`derived_buffers`): its own stay.
        coefficients = self._take_coefficients(state_dict, prefix, error_msgs)
        for name, buffer in self.named_buffers():
            if name.endswith(self.derived_buffers) and prefix + name not in state_dict:
                state_dict[prefix + name] = buffer
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if coefficients is not None:
            self._set_coefficients(*coefficients)

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

    def train(self, mode: bool = True):
        """Train/eval mode as the framework model (frozen stages stay in eval mode); returns the model
        (mmdet's and mmaction2's ``train()`` return None)."""
        super().train(mode)
        return self

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
    def init_weights(self) -> None:
        """One rule for every backbone, the differences being its :attr:`scratch_init`:

        * ``init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix=None, allow_partial=False)`` (or
          ``pretrained=PATH``): :meth:`load_pretrained`, which takes any checkpoint layout of the
          backbone (its ``filter_checkpoint``) and refuses another architecture's;
        * ``init_cfg=None``: :attr:`scratch_init` (mmdet's Swin: its truncated-normal initialisation;
          timm's ViT: nothing, timm initialised it);
        * any other ``init_cfg`` (mmaction2's default list): run by mmengine's
          ``BaseModule.init_weights`` where that is the :attr:`scratch_init`, refused elsewhere.
        """
        cfg, scratch_init = self.init_cfg, type(self).scratch_init
        if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained':
            self.load_pretrained_cfg(cfg)
        elif cfg is None or scratch_init is BaseModule.init_weights:
            if scratch_init is not None:
                scratch_init(self)
        else:
            raise ValueError(f'{type(self).__name__} supports init_cfg=None or '
                             f"dict(type='Pretrained', checkpoint=...), got {cfg!r}")
        self._is_init = True

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
        checkpoint = read_checkpoint(checkpoint, map_location, logger)
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
                print_log(f'{name}: {len(keys)} {what}: {first_keys(keys)}', logger=logger,
                          level=logging.WARNING)
        if share < MIN_LOADED_SHARE and not allow_partial:
            raise PretrainedMismatchError(
                f'{name}: only {share:.1%} of the backbone\'s parameter values loaded from {source} '
                f'(needs {MIN_LOADED_SHARE:.0%}): the checkpoint is {checkpoint_layout}, the model is '
                f'{describe_layout(own)} ({len(loaded)} tensors loaded, '
                f'{len(report.missing_keys)} missing, {len(report.unexpected_keys)} unexpected, '
                f'{len(mismatched)} shape-mismatched; first mismatched: {first_keys(mismatched)}). Use '
                'the checkpoint of this architecture, or set allow_partial=True in the backbone\'s '
                "init_cfg=dict(type='Pretrained', ...) to train from a partial load.")
        return report


class ConventionalMixin:
    """The conventional baseline of a one-stage Dr²Net backbone, put first among its bases
    (``class PlainViT(ConventionalMixin, Dr2NetViT)``): the same module, arguments and checkpoints,
    but its blocks run as the framework runs them, ``x = block(x)`` with ordinary autograd on float32
    activations -- the framework's computation and memory exactly, the baseline of end-to-end
    finetuning. (α, β) stay (1, 0): :meth:`set_coefficients` raises (remove ``AlphaBetaHook`` from a
    baseline config).

    Why not the Dr²Net backbone at ``alpha=1, beta=0, reversible=False``: that computes the same
    function, but its reference mode keeps the streams in ``stream_dtype`` under autograd, which would
    overstate the baseline's memory.

    ``with_cp=True``: every block recomputed in backward (mmseg's and timm's ``with_cp`` / grad
    checkpointing; :func:`~dr2net_mm.branches.checkpointed`), the checkpointing baseline with the
    same state dict, the memory peer of Dr²Net."""
    sequence: ReversibleSequence
    network: str  # what it is the conventional form of, for messages ('ViT', ...)

    def __init__(self, *args, with_cp: bool = False, **kwargs):
        given = [k for k in StageOptions._fields if k in kwargs]
        if given:
            raise ValueError(f'{type(self).__name__} is the conventional {self.network} and takes '
                             f'no {given}; use {self._dr2net_name()} for a reversible backbone')
        with_cp = check_bool('with_cp', with_cp)
        super().__init__(*args, alpha=1.0, beta=0.0, reversible=False, **kwargs)
        self.with_cp = with_cp

    def _dr2net_name(self) -> str:
        return next(c.__name__ for c in type(self).__mro__
                    if issubclass(c, Dr2NetBackboneMixin) and not issubclass(c, ConventionalMixin))

    def set_coefficients(self, alpha: float, beta: float) -> None:
        raise TypeError(f'{type(self).__name__} is the conventional {self.network} baseline, its '
                        f'(alpha, beta) are fixed at (1, 0); remove AlphaBetaHook from the config '
                        f"or use type='{self._dr2net_name()}'")

    def _blocks_in_turn(self, blocks: Iterable[Callable[[Tensor], Tensor]], x: Tensor
                        ) -> Iterator[Tensor]:
        """``x`` after each of ``blocks`` in turn (``x = block(x)``; recomputed in backward under
        ``with_cp``)."""
        enabled = checkpoint_branches(self.with_cp, self.sequence)
        for block in blocks:
            x = checkpointed(block, x, enabled=enabled)
            yield x
