"""``ReversibleGuardHook``: measure the reversible backward's reconstruction error and keep bad steps
out of the weights.

A reversible stage rebuilds its input activations in the backward (Eq. 2 of Zhao et al., CVPR 2024)
and records the relative error of that reconstruction (``ReversibleSequence.reconstruction_errors``).
This hook reads those errors after each training iteration and

* logs ``train/reconstruction_error`` (the worst over all stages and backwards of the iteration; NaN
  if non-finite) and ``train/reconstruction_error_log10`` (readable on the console);
* drops the optimizer step after a bad reversible backward (error non-finite or above ``max_error``)
  or non-finite gradients, on all ranks together;
* skips a whole batch whose preprocessed inputs hold NaN/inf, or whose forward took a reversible
  stage's exact streams out of their range |x| < 2^21 (``on_overflow='skip'``), before any backward;
  stops with a clear message after ``max_consecutive_skips`` skipped batches in a row;
* counts every skip in ``train/skipped_steps``, saved in ``checkpoint['meta']['reversible_guard']``,
  and marks the iteration of a skip with ``train/skipped`` = 1 (0 otherwise).

It works alone (``custom_hooks = [dict(type='ReversibleGuardHook')]``) or inside
:class:`~dr2net_mm.engine.alpha_beta_hook.AlphaBetaHook`, which builds one and forwards its events to
it; ``docs/alpha_beta_hook.md`` states the details.
"""
import contextlib
import logging
import math
from typing import Any, List, Optional

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS
from torch import Tensor, nn

from ..checks import check_bool, check_int, check_positive
from ..core import ReversibleSequence, reversible_stages

__all__ = ['ReversibleGuardHook', 'log10_error', 'total_norm', 'unwrap_model']

GUARD_KEY = 'reversible_guard'  # the guard's state: checkpoint['meta'][GUARD_KEY]
OLD_KEY = 'alpha_beta_hook'  # before the split the counter was saved with AlphaBetaHook's state


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP/MMEngine wrappers (nested wrappers included)."""
    while is_model_wrapper(model):
        model = model.module
    return model


def total_norm(tensors: List[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` together, as a 0-dim float32 tensor (no host sync): non-finite
    when any element is. ``torch.nn.utils.get_total_norm`` does this from torch 2.6 on; the package
    supports torch >= 2.1, so it is written here with ``vector_norm`` (torch >= 1.10)."""
    norms = [torch.linalg.vector_norm(t.detach()).to(torch.float32) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def log10_error(error: float) -> float:
    """log10 of a reconstruction error, floored at 1e-30 (so exactly 0 reads -30); NaN stays NaN."""
    return math.log10(max(error, 1e-30)) if error == error else error


def _fold(old: Optional[Tensor], new: Tensor, combine) -> Tensor:
    return new if old is None else combine(old, new)


@HOOKS.register_module()
class ReversibleGuardHook(Hook):
    """Log the reconstruction error of the reversible backwards and skip the optimizer steps and
    batches that would corrupt the weights (module docstring).

    Args:
        max_error: the error above which a step is dropped; None uses each stage's ``max_error`` (by
            default none: only non-finite errors drop a step). E.g. 1.0 drops steps whose rebuilt
            activations are noise.
        skip: False only measures and logs the errors (no step or batch is ever skipped; a stream
            overflow raises ``OverflowError`` where it happens, as without the hook).
        on_overflow: 'skip' drops a batch whose forward overflowed a stage's exact streams; 'raise'
            stops the run with ``OverflowError`` naming the value and the samples (all ranks).
        max_consecutive_skips: stop with ``RuntimeError`` when this many batches in a row were
            skipped (overflow or non-finite inputs): training is not progressing. None: never.
    """

    priority = 'ABOVE_NORMAL'  # before AlphaBetaHook (NORMAL), whose error-aware mode reads the error

    def __init__(self, max_error: Optional[float] = None, skip: bool = True,
                 on_overflow: str = 'skip', max_consecutive_skips: Optional[int] = 10):
        self.max_error = check_positive('max_error', max_error, allow_none=True)
        self.skip = check_bool('skip', skip)
        if on_overflow not in ('skip', 'raise'):
            raise ValueError(f"on_overflow must be 'skip' or 'raise', got {on_overflow!r}")
        self.on_overflow = on_overflow
        self.max_consecutive_skips = check_int('max_consecutive_skips', max_consecutive_skips, 1,
                                               allow_none=True)
        self.log_name = type(self).__name__  # AlphaBetaHook's own guard logs under its name
        self.skipped_steps = 0
        self.consecutive_skips = 0  # batches skipped in a row (a completed train_step resets it)
        self._skipped_now = False  # this iteration's batch or step was skipped (train/skipped)
        self.iteration_error: Optional[float] = None  # worst error of the last training iteration
        self._stages: List[ReversibleSequence] = []
        self._handles: list = []
        self._in_train_step = False  # inside the batch guard's train_step wrapper
        self._seen: dict = {}  # id(stage) -> the error tensor already folded in
        self._iter_worst: Optional[Tensor] = None  # device tensors: folded without host syncs
        self._step_worst: Optional[Tensor] = None  # ... since the last optimizer step
        self._step_bad: Optional[Tensor] = None
        self._loaded_state: Optional[dict] = None

    # ------------------------------------------------------------------------------ events
    def before_run(self, runner) -> None:
        twins = [hook for hook in runner.hooks if isinstance(hook, ReversibleGuardHook)]
        if len(twins) > 1:
            raise ValueError(f'the config lists ReversibleGuardHook {len(twins)} times; list it once '
                             '(AlphaBetaHook already includes one unless guard=False)')

    def before_train(self, runner) -> None:
        self._stages = reversible_stages(unwrap_model(runner.model))
        self._seen = {id(stage): stage.reconstruction_errors for stage in self._stages}
        self._iter_worst = self._step_worst = self._step_bad = None
        self._restore(runner)
        if self.skip and self._stages:
            self._install_step_guard(runner)
            self._install_batch_guard(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._absorb()
        self.iteration_error = None if self._iter_worst is None else self._iter_worst.item()
        self._iter_worst = None
        if _is_update_iter(runner):  # the step ran (or was dropped): a new accumulation starts
            self._step_bad = self._step_worst = None
        hub = runner.message_hub
        if self.iteration_error is not None:
            hub.update_scalar('train/reconstruction_error', self.iteration_error)
            hub.update_scalar('train/reconstruction_error_log10', log10_error(self.iteration_error))
        hub.update_scalar('train/skipped_steps', self.skipped_steps)
        # A skipped batch adds no loss or grad_norm: the log line shows the smoothed values of the
        # iterations that ran, and this flag says that this one did not.
        hub.update_scalar('train/skipped', int(self._skipped_now))
        self._skipped_now = False

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        runner.model.__dict__.pop('train_step', None)  # the batch guard's wrapper

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta[GUARD_KEY] = dict(version=1, iter=meta.get('iter', runner.iter),
                               skipped_steps=self.skipped_steps,
                               consecutive_skips=self.consecutive_skips)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # resume and load_from alike: before_train restores it only when resuming (runner.iter > 0)
        meta = checkpoint.get('meta') or {}
        self._loaded_state = meta.get(GUARD_KEY) or meta.get(OLD_KEY)

    # ------------------------------------------------------------------------------ errors
    def _absorb(self) -> None:
        """Fold the errors of the reversible backwards not seen yet into the worst error of the
        iteration and the worst error and 'bad' flag since the last optimizer step."""
        for stage in self._stages:
            errors = stage.reconstruction_errors
            if errors is None or errors is self._seen.get(id(stage)):
                continue
            self._seen[id(stage)] = errors
            finite = torch.isfinite(errors).all()
            peak = errors.max()
            worst = torch.where(finite, peak, torch.full_like(peak, float('nan')))
            limit = self.max_error if self.max_error is not None else stage.max_error
            bad = ~finite if limit is None else ~finite | (peak > limit)
            # torch.maximum propagates NaN: a non-finite error stays visible
            self._iter_worst = _fold(self._iter_worst, worst, torch.maximum)
            self._step_worst = _fold(self._step_worst, worst, torch.maximum)
            self._step_bad = _fold(self._step_bad, bad, torch.logical_or)

    def _count_skip(self, message: str) -> None:
        self.skipped_steps += 1
        self._skipped_now = True
        print_log(f'{self.log_name}: {message} (skipped steps: {self.skipped_steps})',
                  logger='current', level=logging.WARNING)

    # ------------------------------------------------------------------------------ step guard
    def _install_step_guard(self, runner) -> None:
        optimizers = [w.optimizer for w in _optim_wrappers(runner)
                      if isinstance(getattr(w, 'optimizer', None), torch.optim.Optimizer)]
        if not optimizers:
            print_log(f'{self.log_name}: no torch optimizer found in runner.optim_wrapper; steps are '
                      'not guarded', logger='current', level=logging.WARNING)
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: drop every gradient of ``optimizer`` (so the step changes neither
        the weights nor the optimizer's state) when a reversible backward since the last step was bad
        or a gradient is non-finite. The decision is all-reduced: all ranks skip together."""
        self._absorb()
        bad, worst = self._step_bad, self._step_worst
        self._step_bad = self._step_worst = None
        grads = [p.grad for group in optimizer.param_groups for p in group['params']
                 if p.grad is not None]
        bad_error = bad.to(torch.float32).cpu() if bad is not None else torch.zeros(())
        bad_grads = (~torch.isfinite(total_norm(grads))).to(torch.float32).cpu() if grads else \
            torch.zeros(())
        flags = torch.stack([bad_error, bad_grads])
        if dist.is_distributed():
            flags = flags.to(grads[0].device if grads else 'cpu')
            dist.all_reduce(flags, op='sum')  # every rank calls it at the same step
        if flags.sum().item() <= 0:
            return None
        for group in optimizer.param_groups:
            for param in group['params']:
                param.grad = None
        self._count_skip(f'skipped an optimizer step: {self._reason(flags, worst)}; gradients '
                         'dropped, weights unchanged')
        return None

    def _reason(self, flags: Tensor, worst: Optional[Tensor]) -> str:
        if flags[0].item() <= 0:
            return 'non-finite gradients (a non-finite loss) on some rank'
        local = 'non-finite' if worst is None or not math.isfinite(worst.item()) else \
            f'{worst.item():.3g}'
        limit = f'{self.max_error:g}' if self.max_error is not None else "each stage's max_error"
        return (f'reversible reconstruction error {local} on this rank (limit: {limit}; all ranks '
                'skip if one is over)')

    # ------------------------------------------------------------------------------ batch guard
    def _install_batch_guard(self, runner) -> None:
        """Drop a training batch before any backward, on all ranks together, when

        * its preprocessed inputs hold NaN/inf: a forward hook on the data preprocessor checks them
          before the model sees them (a detector's matcher would fail on non-finite predictions);
        * its forward took a stage's exact streams out of range: during ``train_step`` the stages
          record the overflow and return zeros instead of raising (``record_overflow``), so every
          rank finishes the same forward; a forward hook on the model then agrees on it.

        Each hook all-reduces its flag and raises :class:`SkipBatch` on every rank; a wrapper of
        ``train_step`` catches it (NOTE: the model hook fires inside DDP's forward, before DDP
        prepares its backward, so no rank waits in a gradient all-reduce)."""
        model = unwrap_model(runner.model)
        preprocessor = getattr(model, 'data_preprocessor', None)
        if isinstance(preprocessor, nn.Module):
            self._handles.append(preprocessor.register_forward_hook(_check_finite_inputs))
        else:
            print_log(f'{self.log_name}: the model has no data_preprocessor module; non-finite '
                      'inputs are not checked', logger='current', level=logging.WARNING)
        self._handles.append(model.register_forward_hook(self._check_overflow))
        train_step = runner.model.train_step

        def guarded_train_step(data, optim_wrapper):
            try:
                with self._recording_overflows():
                    outputs = train_step(data, optim_wrapper=optim_wrapper)
            except SkipBatch as skip:
                self._skip_batch(runner, data, skip)
                return {}
            self.consecutive_skips = 0
            return outputs

        runner.model.train_step = guarded_train_step

    @contextlib.contextmanager
    def _recording_overflows(self):
        """The stages record stream overflows instead of raising them (only here: a crashed run
        leaves none in that mode) and :meth:`_check_overflow` acts."""
        before = [stage.record_overflow for stage in self._stages]
        for stage in self._stages:
            stage.record_overflow = True
        self._in_train_step = True
        try:
            yield
        finally:
            self._in_train_step = False
            for stage, record in zip(self._stages, before):
                stage.record_overflow, stage.overflow = record, None

    def _check_overflow(self, module: nn.Module, args, output) -> None:
        """Forward hook of the model (in the guarded ``train_step`` only, which every rank calls at
        each iteration): raise :class:`SkipBatch` when a stage's streams overflowed on any rank."""
        if not self._in_train_step:
            return
        errors = [stage.overflow for stage in self._stages if stage.overflow is not None]
        for stage in self._stages:
            stage.overflow = None
        flag = torch.tensor([float(bool(errors))])
        if dist.is_distributed():
            dist.all_reduce(flag, op='sum')
        if flag.item() <= 0:
            return
        where = f'on this rank ({errors[0]})' if errors else 'on another rank (its log names it)'
        raise SkipBatch(f"a reversible stage's exact streams overflowed {where}",
                        fatal=self.on_overflow == 'raise')

    def _skip_batch(self, runner, data, skip: 'SkipBatch') -> None:
        """Log and count a dropped batch (naming this rank's samples); stop the run when
        ``on_overflow='raise'`` or after ``max_consecutive_skips`` skipped batches in a row."""
        samples = data.get('data_samples') if isinstance(data, dict) else None
        names = [getattr(s, 'metainfo', {}).get('img_path') for s in samples or []]
        what = (f"at iteration {runner.iter + 1}: {skip.reason}; this rank's samples: "
                f"{[n for n in names if n] or 'unnamed'}")
        if skip.fatal:
            raise OverflowError(f"{self.log_name}: stopped {what} (on_overflow='raise'; 'skip' "
                                'skips such batches)') from None
        self.consecutive_skips += 1
        self._count_skip(f'skipped a batch {what}; no backward, weights unchanged')
        limit = self.max_consecutive_skips
        if limit is not None and self.consecutive_skips >= limit:
            raise RuntimeError(
                f'{self.log_name}: {self.consecutive_skips} batches in a row were skipped (the '
                f'last {what}): training is not progressing, so it stops here. Fix what these '
                'batches have in common (the warnings above name them), or raise '
                'max_consecutive_skips (None: never stop)') from None

    # ------------------------------------------------------------------------------ resume
    def _restore(self, runner) -> None:
        state, self._loaded_state = self._loaded_state, None
        if runner.iter > 0 and state is not None:  # not for load_from without resume
            self.skipped_steps = int(state.get('skipped_steps', 0))
            self.consecutive_skips = int(state.get('consecutive_skips', 0))


class SkipBatch(Exception):
    """Raised on every rank by the batch guard's forward hooks; caught by its ``train_step``
    wrapper. ``reason``: why, as this rank saw it; ``fatal``: stop instead of skipping."""

    def __init__(self, reason: str, fatal: bool = False):
        super().__init__(reason)
        self.reason, self.fatal = reason, fatal


def _optim_wrappers(runner) -> List[Any]:
    wrapper = runner.optim_wrapper
    return list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]


def _is_update_iter(runner) -> bool:
    """Whether the optimizer stepped at this iteration (False for a micro-batch of an accumulation)."""
    checks = [w.should_update() for w in _optim_wrappers(runner) if isinstance(w, OptimWrapper)]
    return any(checks) if checks else True


def _float_tensors(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _float_tensors(item)]
    return []


def _check_finite_inputs(module: nn.Module, args, output) -> None:
    """Forward hook of the data preprocessor (training only): raise :class:`SkipBatch` when the
    inputs of any rank's batch hold NaN/inf (every rank calls it at each iteration)."""
    if not module.training:
        return
    inputs = _float_tensors(output.get('inputs') if isinstance(output, dict) else None)
    flags = [(~torch.isfinite(t)).any() for t in inputs]
    flag = torch.stack(flags).any().to(torch.float32) if flags else torch.zeros(())
    if dist.is_distributed():
        flag = flag.reshape(1).to(inputs[0].device if inputs else 'cpu')
        dist.all_reduce(flag, op='sum')
    if flag.sum().item() > 0:
        raise SkipBatch('non-finite values in the preprocessed inputs on some rank')
