"""``AlphaBetaHook``: Dr²Net's dynamic finetuning schedule of (α, β) (Zhao et al., CVPR 2024, §3.3.2).

Finetuning starts at (α, β) = (1, 0.1), close to the pretrained network (α = 1, β = 0), and moves α
down and β up until an *update end point* whose backward reconstruction is precise enough; after that
the coefficients stay fixed. This hook drives that schedule from the training loop of MMEngine::

    custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
    custom_hooks = [dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=3,
                         interval=2)]

One job per module: the path (policies, schedules, quantised progress) is
:mod:`~dr2net_mm.engine.alpha_beta_path`; the error-aware end-point search (``target_error``) is
:mod:`~dr2net_mm.engine.error_aware`; measuring the reconstruction error and skipping bad steps is
:class:`~dr2net_mm.engine.reversible_guard.ReversibleGuardHook`.

**The guard inside.** ``AlphaBetaHook`` builds its own ``ReversibleGuardHook(max_error, skip=guard)``
and forwards its training and checkpoint events to it, so a config that lists only
``AlphaBetaHook`` logs the errors and guards the steps (``guard=True``, the default) as before the
split. When the config also lists a ``ReversibleGuardHook``, that one is used instead (the guard is
never installed twice) and the error-aware mode reads its errors; ``guard``/``max_error`` of
``AlphaBetaHook`` are then ignored.
"""
import logging
from typing import Any, List, Optional, Sequence, Tuple, Union

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from torch import nn

from ..checks import check_bool, check_int, check_positive
from ..core import reversible_stages
from .alpha_beta_path import AlphaBetaPath, progress
from .error_aware import ErrorAwareSearch
from .reversible_guard import ReversibleGuardHook, unwrap_model

__all__ = ['AlphaBetaHook', 'coefficient_setters']

CHECKPOINT_KEY = 'alpha_beta_hook'  # the hook's state lives in checkpoint['meta'][CHECKPOINT_KEY]
# 2: the guard's counter moved to checkpoint['meta']['reversible_guard'] (version 1 held it here;
# ReversibleGuardHook still reads it from there)
STATE_VERSION = 2


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

    The hook sets (α, β) on the outermost modules with ``set_coefficients`` (never at validation/test
    time) and logs ``train/alpha`` and ``train/beta``; its guard (module docstring) logs the
    reconstruction error and ``train/skipped_steps``. With ``target_error`` it stops on the path at
    the first point whose error stays below the target for ``patience`` η-windows
    (:mod:`~dr2net_mm.engine.error_aware`). Its state is saved in
    ``checkpoint['meta']['alpha_beta_hook']`` and restored on resume. ``docs/alpha_beta_hook.md``
    states all of it in full.

    Args:
        start, end: the (α, β) pairs at the start and the update end point; ``end`` must not be before
            ``start`` (α_end ≤ α_start, β_end ≥ β_start), all values in [0, 1], and β > 0 along the
            path when the model has reversible stages.
        end_iter, end_epoch: τ, in iterations or in epochs (converted with the length of the training
            dataloader). Exactly one is required, except in error-aware mode (at most one).
        interval: η, update the coefficients every η iterations (int ≥ 1).
        policy: 'linear' (default), 'exp' or 'log'.
        schedule: 'simultaneous' (default), 'alpha_first' or 'beta_first'.
        curvature: ``k`` of the 'exp'/'log' policies (> 0).
        target_error: enables the error-aware mode: the reconstruction error an end point must stay
            below.
        patience: consecutive good η-windows required before the error-aware mode stops (int ≥ 1).
        path_steps: the number of η-steps from start to end in error-aware mode without τ (int ≥ 1).
        guard: skip optimizer steps after an imprecise reversible backward (the built-in
            ``ReversibleGuardHook``'s ``skip``).
        max_error: the guard's error threshold (``ReversibleGuardHook``'s ``max_error``).
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
        self.own_guard = ReversibleGuardHook(self.max_error, skip=self.guard)
        self.own_guard.log_name = type(self).__name__
        self.guard_hook = self.own_guard  # the guard in use: ours, or one the config lists (before_run)
        self.search = ErrorAwareSearch(self.target_error, self.patience) if self.error_aware else None

        self._tau: Optional[int] = self.end_iter  # resolved in before_train for end_epoch
        self._setters: List[nn.Module] = []
        self._applied: Optional[Tuple[float, float]] = None
        self._loaded_state: Optional[dict] = None

    # ------------------------------------------------------------------------------ the path
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
        return max(1, int(round(self.end_epoch * len(runner.train_dataloader))))

    def coefficients_at(self, iteration: int, runner=None) -> Tuple[float, float]:
        """(α, β) of the fixed schedule at training iteration ``iteration`` (0-based): a pure function
        of the iteration (``runner`` is needed only to convert ``end_epoch``). In error-aware mode this
        is the point the walk would reach by then without stopping or holding; the hook's actual
        values are :attr:`current`."""
        return self.path.point(progress(iteration, self.interval, self.resolve_tau(runner)))

    @property
    def num_steps(self) -> int:
        """Error-aware mode: the number of η-steps from start to end, ``ceil(τ/η)``."""
        return max(1, -(-self.resolve_tau() // self.interval))

    def point_at_step(self, step: int) -> Tuple[float, float]:
        """Error-aware mode: (α, β) at step ``k`` of the walk, ``coefficients_at(k·η)``."""
        return self.coefficients_at(step * self.interval)

    def values_for(self, iteration: int) -> Tuple[float, float]:
        """The (α, β) the hook applies at ``iteration`` given its current state."""
        if self.search is not None:
            return self.point_at_step(self.search.step)
        return self.coefficients_at(iteration)

    @property
    def current(self) -> Optional[Tuple[float, float]]:
        """The (α, β) last applied to the model (None before training)."""
        return self._applied

    @property
    def end_point(self) -> Optional[Tuple[float, float]]:
        """Error-aware mode: the end point the search stopped at (None while it walks)."""
        stopped = self.search is not None and self.search.stopped
        return self.point_at_step(self.search.step) if stopped else None

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps and batches the guard has skipped so far."""
        return self.guard_hook.skipped_steps

    # ------------------------------------------------------------------------------ events
    def before_run(self, runner) -> None:
        self.guard_hook = self._choose_guard(runner)

    def before_train(self, runner) -> None:
        self._find_modules(runner)
        self._tau = self.resolve_tau(runner)
        self._restore(runner)
        self._log_plan()
        self._apply(*self.values_for(runner.iter))
        self._forward_to_own_guard('before_train', runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._apply(*self.values_for(runner.iter))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._forward_to_own_guard('after_train_iter', runner, batch_idx, data_batch, outputs)
        if self._applied is not None:
            runner.message_hub.update_scalar('train/alpha', self._applied[0])
            runner.message_hub.update_scalar('train/beta', self._applied[1])
        if self.search is not None and not self.search.stopped:
            self.search.observe(self.guard_hook.iteration_error)
            if (runner.iter + 1) % self.interval == 0:
                self.search.end_window(runner.iter + 1, self.num_steps, self.point_at_step)

    def after_train(self, runner) -> None:
        self._forward_to_own_guard('after_train', runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self._forward_to_own_guard('before_save_checkpoint', runner, checkpoint)
        meta = checkpoint.setdefault('meta', {})
        meta[CHECKPOINT_KEY] = dict(self.state_dict(), iter=meta.get('iter', runner.iter))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called for resume and for load_from alike; before_train decides (resume: runner.iter > 0).
        self._forward_to_own_guard('after_load_checkpoint', runner, checkpoint)
        self._loaded_state = (checkpoint.get('meta') or {}).get(CHECKPOINT_KEY)

    # ------------------------------------------------------------------------------ helpers
    def _choose_guard(self, runner) -> ReversibleGuardHook:
        """The config's ReversibleGuardHook if it lists one (ours then stays idle), else ours."""
        listed = [hook for hook in runner.hooks if isinstance(hook, ReversibleGuardHook)]
        if not listed:
            return self.own_guard
        print_log('AlphaBetaHook: the config lists ReversibleGuardHook; it guards the steps and '
                  'measures the errors (the guard and max_error of AlphaBetaHook are not used)',
                  logger='current')
        if self.error_aware and runner.hooks.index(listed[0]) > runner.hooks.index(self):
            raise ValueError(
                f'the error-aware mode reads the error ReversibleGuardHook measured in the same '
                f'iteration, but ReversibleGuardHook (priority {listed[0].priority}) runs after '
                f'AlphaBetaHook (priority {self.priority}): give it a higher priority (its default, '
                f"'ABOVE_NORMAL') or list only AlphaBetaHook")
        return listed[0]

    def _forward_to_own_guard(self, event: str, *args: Any) -> None:
        if self.guard_hook is self.own_guard:
            getattr(self.own_guard, event)(*args)

    def _find_modules(self, runner) -> None:
        model = unwrap_model(runner.model)
        self._setters = coefficient_setters(model)
        if not self._setters:
            print_log('AlphaBetaHook: the model has no module with set_coefficients(alpha, beta); '
                      'the hook does nothing', logger='current', level=logging.WARNING)
        if any(stage.reversible for stage in reversible_stages(model)) and self.start[1] <= 0.0:
            raise ValueError(
                f'beta must stay > 0 along the whole path for a reversible model (the backward divides '
                f'by beta): start={self.start}, end={self.end}. Start at beta > 0 (the paper: 0.1) or '
                f'switch the model to reference mode (reversible=False)')

    def _log_plan(self) -> None:
        if self.search is not None:
            mode = (f'error-aware (target_error={self.target_error:g}, patience={self.patience}, '
                    f'{self.num_steps} steps of {self.interval} iterations)')
        else:
            mode = f'tau={self._tau} iterations'
        print_log(f'AlphaBetaHook: {self.start} -> {self.end}, policy={self.policy}, '
                  f'schedule={self.schedule}, interval={self.interval}, {mode}; sets '
                  f'{len(self._setters)} module(s)', logger='current')

    def _apply(self, alpha: float, beta: float) -> None:
        for module in self._setters:
            module.set_coefficients(alpha, beta)
        self._applied = (alpha, beta)

    # ------------------------------------------------------------------------------ checkpoints
    def _signature(self) -> dict:
        return dict(start=self.start, end=self.end, interval=self.interval, policy=self.policy,
                    schedule=self.schedule, curvature=self.curvature, tau=self._tau,
                    target_error=self.target_error, patience=self.patience)

    def state_dict(self) -> dict:
        """The hook's resumable state (saved in ``checkpoint['meta']['alpha_beta_hook']``)."""
        search = self.search.state_dict() if self.search is not None else {}
        return dict(search, version=STATE_VERSION, applied=self._applied, end_point=self.end_point,
                    config=self._signature())

    def _restore(self, runner) -> None:
        state, self._loaded_state = self._loaded_state, None
        if runner.iter == 0:
            if state is not None:
                print_log('AlphaBetaHook: the loaded checkpoint has a schedule state, but training '
                          'starts at iteration 0 (load_from without resume): the schedule starts '
                          'afresh', logger='current')
            return
        if state is None:
            if self.search is not None:
                self.search.step = min(self.num_steps, runner.iter // self.interval)
                print_log(f'AlphaBetaHook: resumed at iteration {runner.iter} without a saved '
                          f'error-aware state; continuing from step {self.search.step} (where the '
                          'walk would be without holding)', logger='current', level=logging.WARNING)
            return
        self._warn_if_changed(state, runner.iter)
        if self.search is not None:
            self.search.load_state_dict(state, self.num_steps)
            print_log(f'AlphaBetaHook: resumed error-aware state: step {self.search.step}/'
                      f'{self.num_steps}, stopped={self.search.stopped}, end point {self.end_point}',
                      logger='current')

    def _warn_if_changed(self, state: dict, iteration: int) -> None:
        if state.get('iter') is not None and state['iter'] != iteration:
            print_log(f'AlphaBetaHook: the saved state is from iteration {state["iter"]} but training '
                      f'resumes at {iteration}', logger='current', level=logging.WARNING)
        saved = state.get('config') or {}
        changed = {k: (saved.get(k), v) for k, v in self._signature().items()
                   if k in saved and _normalise(saved[k]) != _normalise(v)}
        if changed:
            print_log(f'AlphaBetaHook: schedule settings changed since the checkpoint (saved, now): '
                      f'{changed}; values follow the new settings', logger='current',
                      level=logging.WARNING)


def _normalise(value: Any) -> Any:
    return list(_normalise(v) for v in value) if isinstance(value, (list, tuple)) else value
