"""``AlphaBetaHook``: Dr²Net's dynamic finetuning schedule of (α, β) (Zhao et al., CVPR 2024, §3.3.2).

Finetuning starts at (α, β) = (1, 0.1), close to the pretrained network (α = 1, β = 0), and moves α
down and β up until an *update end point* whose backward reconstruction is precise enough; after that
the coefficients stay fixed. This hook drives that schedule from the training loop of MMEngine::

    custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
    custom_hooks = [dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=3,
                         interval=2)]

Besides the paper's fixed schedule it has an error-aware mode (``target_error``) that picks the end
point from the measured reconstruction error, and a guard that drops the optimizer step of an
iteration whose reversible backward was imprecise. See :class:`AlphaBetaHook`; the path itself
(policies, schedules, quantised progress) is :mod:`dr2net_mm.engine.alpha_beta_path`.
"""
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
from .alpha_beta_path import POLICIES, SCHEDULES, AlphaBetaPath, progress  # noqa: F401

__all__ = ['AlphaBetaHook', 'coefficient_setters', 'unwrap_model']

CHECKPOINT_KEY = 'alpha_beta_hook'  # the hook's state lives in checkpoint['meta'][CHECKPOINT_KEY]
STATE_VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP/MMEngine wrappers (nested wrappers included)."""
    while is_model_wrapper(model):
        model = model.module
    return model


def coefficient_setters(model: nn.Module) -> List[nn.Module]:
    """The outermost modules of ``model`` with a ``set_coefficients`` method (model wrappers are
    unwrapped). A backbone that has it propagates to its own stages, so modules inside one are not
    listed; stages elsewhere (e.g. in a neck) are."""
    found: List[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if callable(getattr(module, 'set_coefficients', None)):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(unwrap_model(model))
    return found


def total_norm(tensors: List[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` together, as a 0-dim float32 tensor (no host sync): non-finite
    when any element is. ``torch.nn.utils.get_total_norm`` does this from torch 2.6 on; the package
    supports torch >= 2.1, so it is written here with ``vector_norm`` (torch >= 1.10)."""
    norms = [torch.linalg.vector_norm(t.detach()).to(torch.float32) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def log10_error(error: float) -> float:
    """log10 of a reconstruction error, floored at 1e-30 (so exactly 0 reads -30); NaN stays NaN."""
    return math.log10(max(error, 1e-30)) if error == error else error


@HOOKS.register_module()
class AlphaBetaHook(Hook):
    r"""Set the Dr²Net coefficients (α, β) of the model before every training iteration.

    **Path.** The coefficients move from ``start`` to ``end`` along an
    :class:`~dr2net_mm.engine.alpha_beta_path.AlphaBetaPath` (``policy``, ``schedule``; see that
    module for the equations), updated every ``interval`` (η) iterations and reaching ``end`` at τ =
    ``end_iter`` (or ``end_epoch × len(train_dataloader)``). The defaults are the paper's: start
    (1, 0.1), end (0.3, 0.7) (§3.3.2 / Fig. 3); choose the end point per task (Tables 8-10 pick the
    point at 1e-7 gradient error). At iteration ``t`` (0-based, ``runner.iter``; with gradient
    accumulation each micro-batch is an iteration) the values are a pure function of ``t``
    (:meth:`coefficients_at`), so a run resumed from a checkpoint continues with exactly the values of
    an uninterrupted run.

    **Which modules, logging, guard, error-aware mode**: ``docs/alpha_beta_hook.md`` states them in
    full. In short: the hook sets (α, β) on the outermost modules with ``set_coefficients`` (never at
    validation/test time); logs ``train/alpha``, ``train/beta``, ``train/reconstruction_error`` and
    ``train/skipped_steps``, and ``train/reconstruction_error_log10`` (readable on the console, which
    prints 4 decimals; -30 for an error of exactly 0); with ``guard`` drops the optimizer step after an imprecise reversible
    backward (all ranks together); with ``target_error`` stops on the path at the first point whose
    error stays below the target for ``patience`` η-windows. Its state is saved in
    ``checkpoint['meta']['alpha_beta_hook']`` and restored on resume.

    Args:
        start, end: the (α, β) pairs at the start and the update end point; ``end`` must not be before
            ``start`` (α_end ≤ α_start, β_end ≥ β_start), all values in [0, 1], and β > 0 along the
            path when the model has reversible stages.
        end_iter, end_epoch: τ, in iterations or in epochs (converted with the length of the training
            dataloader). Exactly one is required, except in error-aware mode (at most one).
        interval: η, update the coefficients every η iterations (int ≥ 1).
        policy: 'linear' (default), 'exp' or 'log' (see above).
        schedule: 'simultaneous' (default), 'alpha_first' or 'beta_first' (see above).
        curvature: ``k`` of the 'exp'/'log' policies (> 0).
        target_error: enables the error-aware mode: the reconstruction error an end point must stay
            below.
        patience: consecutive good η-windows required before the error-aware mode stops (int ≥ 1).
        path_steps: the number of η-steps from start to end in error-aware mode without τ (int ≥ 1).
        guard: skip optimizer steps after an imprecise reversible backward (see above).
        max_error: the guard's error threshold; None uses each stage's ``max_error`` (by default
            none: only non-finite errors skip a step). E.g. 1.0 skips steps whose rebuilt
            activations are noise.
    """

    priority = 'NORMAL'

    def __init__(self,
                 start: Sequence[float] = (1.0, 0.1),
                 end: Sequence[float] = (0.3, 0.7),
                 end_iter: Optional[int] = None,
                 end_epoch: Optional[Union[int, float]] = None,
                 interval: int = 1,
                 policy: str = 'linear',
                 schedule: str = 'simultaneous',
                 curvature: float = 5.0,
                 target_error: Optional[float] = None,
                 patience: int = 3,
                 path_steps: int = 20,
                 guard: bool = True,
                 max_error: Optional[float] = None):
        self.path = AlphaBetaPath(start, end, policy, schedule, curvature)
        self.start, self.end = self.path.start, self.path.end
        self.policy, self.schedule, self.curvature = policy, schedule, self.path.curvature
        self.interval = check_int('interval', interval, 1)
        self.end_iter = check_int('end_iter', end_iter, 1, allow_none=True)
        self.end_epoch = check_positive('end_epoch', end_epoch, allow_none=True)
        self.target_error = check_positive('target_error', target_error, allow_none=True)
        self.error_aware = self.target_error is not None
        if self.end_iter is not None and self.end_epoch is not None:
            raise ValueError('give the end point as end_iter or as end_epoch, not both '
                             f'(got end_iter={end_iter}, end_epoch={end_epoch})')
        if self.end_iter is None and self.end_epoch is None and not self.error_aware:
            raise ValueError('the schedule needs its end tau: give end_iter (iterations) or end_epoch '
                             '(epochs), or target_error for the error-aware mode')
        self.patience = check_int('patience', patience, 1)
        self.path_steps = check_int('path_steps', path_steps, 1)
        self.guard = check_bool('guard', guard)
        self.max_error = check_positive('max_error', max_error, allow_none=True)

        self._tau: Optional[int] = self.end_iter  # resolved in before_train for end_epoch
        self._setters: List[nn.Module] = []
        self._stages: List[ReversibleSequence] = []
        self._handles: list = []
        self._applied: Optional[Tuple[float, float]] = None
        # errors of reversible backwards (device tensors, folded without host syncs)
        self._seen: Dict[int, Tensor] = {}
        self._iter_worst: Optional[Tensor] = None
        self._accum_worst: Optional[Tensor] = None
        self._accum_bad: Optional[Tensor] = None
        self._loaded_state: Optional[dict] = None
        # state saved in checkpoints
        self.skipped_steps = 0
        self.step = 0  # error-aware: current step along the path
        self.good_windows = 0
        self.stopped = False
        self.window_error: Optional[float] = None  # worst error of the open window
        self.end_point: Optional[Tuple[float, float]] = None  # error-aware: chosen end point
        self.end_point_iter: Optional[int] = None

    # ------------------------------------------------------------------------------ the path
    def _curve(self, p: float) -> float:
        """The policy's f: [0, 1] → [0, 1] (:func:`~.alpha_beta_path.policy_curve`)."""
        return self.path.curve(p)

    def point(self, progress: float) -> Tuple[float, float]:
        """(α, β) at progress ``p ∈ [0, 1]`` of the path (clipped to [0, 1])."""
        return self.path.point(progress)

    def resolve_tau(self, runner=None) -> int:
        """τ in iterations: ``end_iter``, or ``round(end_epoch × len(train_dataloader))`` (≥ 1), or in
        error-aware mode without either ``path_steps × interval``."""
        if self.end_iter is not None:
            return self.end_iter
        if self.end_epoch is None:
            return self.path_steps * self.interval
        if runner is None:
            if self._tau is not None:
                return self._tau
            raise ValueError('end_epoch needs the training dataloader length: pass the runner '
                             '(coefficients_at(iteration, runner)) or use end_iter')
        length = len(runner.train_dataloader)
        return max(1, int(round(self.end_epoch * length)))

    def progress_at(self, iteration: int, runner=None) -> float:
        """``p = min(1, floor(t/η)·η / τ)`` (:func:`~.alpha_beta_path.progress`)."""
        return progress(iteration, self.interval, self.resolve_tau(runner))

    def coefficients_at(self, iteration: int, runner=None) -> Tuple[float, float]:
        """(α, β) of the fixed schedule at training iteration ``iteration`` (0-based): a pure function
        of the iteration (``runner`` is needed only to convert ``end_epoch``). In error-aware mode this
        is the point the walk would reach by then without stopping or holding; the hook's actual
        values are :attr:`current`."""
        return self.point(self.progress_at(iteration, runner))

    @property
    def num_steps(self) -> int:
        """Error-aware mode: the number of η-steps from start to end, ``ceil(τ/η)``."""
        return max(1, -(-self.resolve_tau() // self.interval))

    def point_at_step(self, step: int) -> Tuple[float, float]:
        """Error-aware mode: (α, β) at step ``k`` of the walk, ``coefficients_at(k·η)``."""
        return self.coefficients_at(step * self.interval)

    def values_for(self, iteration: int) -> Tuple[float, float]:
        """The (α, β) the hook applies at ``iteration`` given its current state."""
        if self.error_aware:
            return self.point_at_step(self.step)
        return self.coefficients_at(iteration)

    @property
    def current(self) -> Optional[Tuple[float, float]]:
        """The (α, β) last applied to the model (None before training)."""
        return self._applied

    # ------------------------------------------------------------------------------ applying
    def _apply(self, alpha: float, beta: float) -> None:
        for module in self._setters:
            module.set_coefficients(alpha, beta)
        self._applied = (alpha, beta)

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        self._setters = coefficient_setters(model)
        self._stages = reversible_stages(model)
        if not self._setters:
            print_log('AlphaBetaHook: the model has no module with set_coefficients(alpha, beta); '
                      'the hook does nothing', logger='current', level=logging.WARNING)
        self._tau = self.resolve_tau(runner)
        if any(stage.reversible for stage in self._stages) and self.start[1] <= 0.0:
            raise ValueError(
                f'beta must stay > 0 along the whole path for a reversible model (the backward divides '
                f'by beta): start={self.start}, end={self.end}. Start at beta > 0 (the paper: 0.1) or '
                f'switch the model to reference mode (reversible=False)')
        self._reset_trackers()
        self._restore(runner)
        if self.error_aware:
            mode = (f'error-aware (target_error={self.target_error:g}, patience={self.patience}, '
                    f'{self.num_steps} steps of {self.interval} iterations)')
        else:
            mode = f'tau={self._tau} iterations'
        print_log(f'AlphaBetaHook: {self.start} -> {self.end}, policy={self.policy}, '
                  f'schedule={self.schedule}, interval={self.interval}, {mode}; sets '
                  f'{len(self._setters)} module(s), monitors {len(self._stages)} reversible stage(s)',
                  logger='current')
        self._apply(*self.values_for(runner.iter))
        if self.guard and self._stages:
            self._install_guard(runner)
            self._install_batch_guard(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._apply(*self.values_for(runner.iter))

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        runner.model.__dict__.pop('train_step', None)  # the batch guard's wrapper

    # ------------------------------------------------------------------------------ errors
    def _reset_trackers(self) -> None:
        self._seen = {id(stage): stage.reconstruction_errors for stage in self._stages}
        self._iter_worst = self._accum_worst = self._accum_bad = None

    def _absorb(self) -> None:
        """Fold the errors of reversible backwards not seen yet into the per-iteration and the
        since-last-step trackers (device tensors, no host sync)."""
        for stage in self._stages:
            errors = stage.reconstruction_errors
            if errors is None or errors is self._seen.get(id(stage)):
                continue
            self._seen[id(stage)] = errors
            finite = torch.isfinite(errors).all()
            peak = errors.max()
            worst = torch.where(finite, peak, torch.full_like(peak, float('nan')))
            threshold = self.max_error if self.max_error is not None else stage.max_error
            bad = ~finite if threshold is None else ~finite | (peak > threshold)
            # torch.maximum propagates NaN: a non-finite error stays visible.
            self._iter_worst = worst if self._iter_worst is None else torch.maximum(
                self._iter_worst, worst)
            self._accum_worst = worst if self._accum_worst is None else torch.maximum(
                self._accum_worst, worst)
            self._accum_bad = bad if self._accum_bad is None else self._accum_bad | bad

    # ------------------------------------------------------------------------------ guard
    @staticmethod
    def _optimizers(runner) -> List[torch.optim.Optimizer]:
        wrapper = runner.optim_wrapper
        wrappers = list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        optimizers = []
        for item in wrappers:
            optimizer = getattr(item, 'optimizer', None)
            if isinstance(optimizer, torch.optim.Optimizer):
                optimizers.append(optimizer)
        return optimizers

    def _install_guard(self, runner) -> None:
        optimizers = self._optimizers(runner)
        if not optimizers:
            print_log('AlphaBetaHook: no torch optimizer found in runner.optim_wrapper; the guard is '
                      'off', logger='current', level=logging.WARNING)
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """Drop all gradients of ``optimizer`` when a reversible backward since the last step was bad
        or a gradient is non-finite (a non-finite loss)."""
        self._absorb()
        bad, worst = self._accum_bad, self._accum_worst
        self._accum_bad = self._accum_worst = None
        flag = bad.to(torch.float32) if bad is not None else torch.zeros(())
        grads = [p.grad for group in optimizer.param_groups for p in group['params']
                 if p.grad is not None]
        grads_bad = torch.zeros(()) if not grads else \
            (~torch.isfinite(total_norm(grads))).to(torch.float32)
        flag = torch.stack([flag.cpu(), 2 * grads_bad.cpu()])
        if dist.is_distributed():
            flag = flag.to(grads[0].device if grads else 'cpu')
            dist.all_reduce(flag, op='sum')  # every rank calls it at the same step
        if flag.sum().item() <= 0:
            return None
        for group in optimizer.param_groups:
            for param in group['params']:
                param.grad = None
        if flag[0].item() > 0:
            local = 'non-finite' if worst is None or not math.isfinite(worst.item()) else \
                f'{worst.item():.3g}'
            limit = f'{self.max_error:g}' if self.max_error is not None else "each stage's max_error"
            reason = (f'reversible reconstruction error {local} on this rank (limit: {limit}; all '
                      'ranks skip if one is over)')
        else:
            reason = 'non-finite gradients (a non-finite loss) on some rank'
        self._count_skip(f'skipped an optimizer step: {reason} at (alpha, beta) = '
                         f'{self._applied}; gradients dropped, weights unchanged')
        return None

    def _count_skip(self, message: str) -> None:
        """One counter (``train/skipped_steps``) for the guard's skipped steps and skipped batches."""
        self.skipped_steps += 1
        print_log(f'AlphaBetaHook: {message} (skipped steps: {self.skipped_steps})',
                  logger='current', level=logging.WARNING)

    def _install_batch_guard(self, runner) -> None:
        """Skip a training batch whose preprocessed inputs hold NaN/inf before the model sees it (a
        detector's matcher would fail on the non-finite predictions): a forward hook on the data
        preprocessor flags the batch (all ranks together), a wrapper of ``train_step`` skips it."""
        preprocessor = getattr(unwrap_model(runner.model), 'data_preprocessor', None)
        if not isinstance(preprocessor, nn.Module):
            print_log('AlphaBetaHook: the model has no data_preprocessor module; non-finite inputs '
                      'are not checked', logger='current', level=logging.WARNING)
            return
        self._handles.append(preprocessor.register_forward_hook(_check_finite_inputs))
        train_step = runner.model.train_step

        def guarded_train_step(data, optim_wrapper):
            try:
                return train_step(data, optim_wrapper=optim_wrapper)
            except NonFiniteInputs:
                samples = data.get('data_samples') if isinstance(data, dict) else None
                names = [getattr(s, 'metainfo', {}).get('img_path') for s in samples or []]
                self._count_skip(f'skipped a batch at iteration {runner.iter + 1}: non-finite '
                                 'values in the preprocessed inputs (on some rank; this rank\'s '
                                 f'samples: {[n for n in names if n] or "unnamed"}); no forward, '
                                 'weights unchanged')
                return {}

        runner.model.train_step = guarded_train_step

    @staticmethod
    def _is_update_iter(runner) -> bool:
        wrapper = runner.optim_wrapper
        wrappers = list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        checks = [w.should_update() for w in wrappers if isinstance(w, OptimWrapper)]
        return any(checks) if checks else True

    # ------------------------------------------------------------------------------ per iteration
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._absorb()
        error = None if self._iter_worst is None else self._iter_worst.item()
        self._iter_worst = None
        if self._is_update_iter(runner):  # the step ran (or was skipped): start a new accumulation
            self._accum_bad = self._accum_worst = None
        hub = runner.message_hub
        if self._applied is not None:
            hub.update_scalar('train/alpha', self._applied[0])
            hub.update_scalar('train/beta', self._applied[1])
        if error is not None:
            hub.update_scalar('train/reconstruction_error', error)
            # the console prints 4 decimals: log10 keeps small errors readable (exactly 0: -30)
            hub.update_scalar('train/reconstruction_error_log10', log10_error(error))
        hub.update_scalar('train/skipped_steps', self.skipped_steps)
        if self.error_aware and not self.stopped:
            self._error_aware_update(runner, error)

    def _error_aware_update(self, runner, error: Optional[float]) -> None:
        if error is not None:
            if self.window_error is None or error != error or error > self.window_error:
                self.window_error = error
        if (runner.iter + 1) % self.interval != 0:
            return
        worst = 0.0 if self.window_error is None else self.window_error  # none measured: exact
        self.window_error = None
        if math.isfinite(worst) and worst < self.target_error:
            self.good_windows += 1
            if self.good_windows >= self.patience:
                self._stop(runner, worst, met=True)
            return
        self.good_windows = 0
        if self.step >= self.num_steps:
            self._stop(runner, worst, met=False)
            return
        self.step += 1
        print_log(f'AlphaBetaHook: reconstruction error {worst:.3g} >= target '
                  f'{self.target_error:g}: step {self.step}/{self.num_steps} -> (alpha, beta) = '
                  f'{self.point_at_step(self.step)}', logger='current', level=logging.DEBUG)

    def _stop(self, runner, worst: float, met: bool) -> None:
        self.stopped = True
        self.end_point = self.point_at_step(self.step)
        self.end_point_iter = runner.iter + 1
        if met:
            print_log(f'AlphaBetaHook: error-aware end point (alpha, beta) = {self.end_point} at step '
                      f'{self.step}/{self.num_steps}, chosen at iteration {self.end_point_iter}: '
                      f'reconstruction error stayed below {self.target_error:g} for {self.patience} '
                      f'window(s) of {self.interval} iteration(s) (last {worst:.3g}); fixed from now '
                      'on', logger='current')
        else:
            print_log(f'AlphaBetaHook: reached the end of the path {self.end_point} at iteration '
                      f'{self.end_point_iter} without meeting target_error={self.target_error:g} (last '
                      f'window {worst:.3g}); keeping the end point', logger='current',
                      level=logging.WARNING)

    # ------------------------------------------------------------------------------ checkpoints
    def _signature(self) -> dict:
        return dict(start=self.start, end=self.end, interval=self.interval, policy=self.policy,
                    schedule=self.schedule, curvature=self.curvature, tau=self._tau,
                    target_error=self.target_error, patience=self.patience)

    def state_dict(self) -> dict:
        """The hook's resumable state (saved in ``checkpoint['meta']['alpha_beta_hook']``)."""
        return dict(version=STATE_VERSION, skipped_steps=self.skipped_steps, step=self.step,
                    good_windows=self.good_windows, stopped=self.stopped,
                    window_error=self.window_error, end_point=self.end_point,
                    end_point_iter=self.end_point_iter, applied=self._applied,
                    config=self._signature())

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state.get('skipped_steps', 0))
        self.step = int(state.get('step', 0))
        self.good_windows = int(state.get('good_windows', 0))
        self.stopped = bool(state.get('stopped', False))
        self.window_error = state.get('window_error')
        end_point = state.get('end_point')
        self.end_point = tuple(end_point) if end_point is not None else None
        self.end_point_iter = state.get('end_point_iter')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        state = self.state_dict()
        state['iter'] = meta.get('iter', runner.iter)
        meta[CHECKPOINT_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called for resume and for load_from alike; before_train decides (resume: runner.iter > 0).
        meta = checkpoint.get('meta') or {}
        self._loaded_state = meta.get(CHECKPOINT_KEY)

    def _restore(self, runner) -> None:
        state, self._loaded_state = self._loaded_state, None
        if runner.iter == 0:
            if state is not None:
                print_log('AlphaBetaHook: the loaded checkpoint has a schedule state, but training '
                          'starts at iteration 0 (load_from without resume): the schedule starts '
                          'afresh', logger='current')
            return
        if state is None:
            if self.error_aware:
                self.step = min(self.num_steps, runner.iter // self.interval)
                print_log(f'AlphaBetaHook: resumed at iteration {runner.iter} without a saved '
                          f'error-aware state; continuing from step {self.step} (where the walk '
                          'would be without holding)', logger='current', level=logging.WARNING)
            return
        if state.get('iter') is not None and state['iter'] != runner.iter:
            print_log(f'AlphaBetaHook: the saved state is from iteration {state["iter"]} but training '
                      f'resumes at {runner.iter}', logger='current', level=logging.WARNING)
        saved = state.get('config') or {}
        changed = {k: (saved.get(k), v) for k, v in self._signature().items()
                   if k in saved and _normalise(saved[k]) != _normalise(v)}
        if changed:
            print_log(f'AlphaBetaHook: schedule settings changed since the checkpoint (saved, now): '
                      f'{changed}; values follow the new settings', logger='current',
                      level=logging.WARNING)
        self.load_state_dict(state)
        if self.error_aware:
            self.step = min(self.step, self.num_steps)
            print_log(f'AlphaBetaHook: resumed error-aware state: step {self.step}/{self.num_steps}, '
                      f'stopped={self.stopped}, end point {self.end_point}', logger='current')


class NonFiniteInputs(Exception):
    """Raised by the batch guard's data-preprocessor hook; caught by its ``train_step`` wrapper."""


def _float_tensors(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _float_tensors(item)]
    return []


def _check_finite_inputs(module: nn.Module, args, output) -> None:
    """Forward hook of the data preprocessor (training only): raise :class:`NonFiniteInputs` when
    the inputs of any rank's batch hold NaN/inf (every rank calls it at each iteration)."""
    if not module.training:
        return
    inputs = _float_tensors(output.get('inputs') if isinstance(output, dict) else None)
    flags = [(~torch.isfinite(t)).any() for t in inputs]
    flag = torch.stack(flags).any().to(torch.float32) if flags else torch.zeros(())
    if dist.is_distributed():
        flag = flag.reshape(1).to(inputs[0].device if inputs else 'cpu')
        dist.all_reduce(flag, op='sum')
    if flag.sum().item() > 0:
        raise NonFiniteInputs()


def _normalise(value: Any) -> Any:
    return list(_normalise(v) for v in value) if isinstance(value, (list, tuple)) else value
