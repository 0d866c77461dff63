r"""The error-aware end-point search of :class:`~dr2net_mm.engine.alpha_beta_hook.AlphaBetaHook`
(``target_error`` set; beyond the paper, which fixes the end point per task from Tables 8-10).

The hook walks its (α, β) path in η-steps ``k = 0 … K`` (step ``k`` is the point of progress
``p_k = min(1, k·η/τ)``). Training runs in windows of η iterations; at the end of each window the worst
reconstruction error of the window ``e_w`` (all stages, all iterations; a window without a reversible
backward counts as exact, ``e_w = 0``) decides:

* ``e_w < target_error``: a good window; after ``patience`` good windows in a row at the same step the
  search stops there for the rest of training;
* otherwise (non-finite included): the count resets and the walk advances to ``k + 1``; at ``k = K``
  (the path's end) it stops anyway and warns that the target was not met.

So it keeps the first point of the path (the one closest to the pretrained network) whose error stays
below the target for ``patience`` windows. :class:`ErrorAwareSearch` holds this state machine over the
step index ``k``; the hook maps ``k`` to (α, β) and saves :meth:`ErrorAwareSearch.state_dict` in its
checkpoint state.
"""
import logging
import math
from typing import Callable, Optional, Tuple

from mmengine.logging import print_log

__all__ = ['ErrorAwareSearch']

FIELDS = ('step', 'good_windows', 'stopped', 'window_error', 'end_point_iter')


class ErrorAwareSearch:
    """The walk's state: ``step`` (k), ``good_windows``, ``stopped``, ``window_error`` (worst error of
    the open window, None when none was measured) and ``end_point_iter`` (the iteration count at which
    it stopped)."""

    def __init__(self, target_error: float, patience: int):
        self.target_error, self.patience = target_error, patience
        self.step = 0
        self.good_windows = 0
        self.stopped = False
        self.window_error: Optional[float] = None
        self.end_point_iter: Optional[int] = None

    def observe(self, error: Optional[float]) -> None:
        """Fold one iteration's worst error (None: no reversible backward) into the open window; a
        NaN stays."""
        if error is None:
            return
        if self.window_error is None or error != error or error > self.window_error:
            self.window_error = error

    def end_window(self, iterations: int, num_steps: int,
                   point_at_step: Callable[[int], Tuple[float, float]]) -> None:
        """Close the window after ``iterations`` training iterations: hold, advance or stop."""
        worst = 0.0 if self.window_error is None else self.window_error
        self.window_error = None
        if math.isfinite(worst) and worst < self.target_error:
            self.good_windows += 1
            if self.good_windows >= self.patience:
                self._stop(iterations, worst, f'{point_at_step(self.step)} at step '
                           f'{self.step}/{num_steps}', met=True)
            return
        self.good_windows = 0
        if self.step >= num_steps:
            self._stop(iterations, worst, f'{point_at_step(self.step)}', met=False)
            return
        self.step += 1
        print_log(f'AlphaBetaHook: reconstruction error {worst:.3g} >= target '
                  f'{self.target_error:g}: step {self.step}/{num_steps} -> (alpha, beta) = '
                  f'{point_at_step(self.step)}', logger='current', level=logging.DEBUG)

    def _stop(self, iterations: int, worst: float, point: str, met: bool) -> None:
        self.stopped = True
        self.end_point_iter = iterations
        if met:
            print_log(f'AlphaBetaHook: error-aware end point (alpha, beta) = {point}, chosen at '
                      f'iteration {iterations}: reconstruction error stayed '
                      f'below {self.target_error:g} for {self.patience} window(s) (last '
                      f'{worst:.3g}); fixed from now on', logger='current')
        else:
            print_log(f'AlphaBetaHook: reached the end of the path {point} at iteration '
                      f'{iterations} without meeting target_error={self.target_error:g} (last window '
                      f'{worst:.3g}); keeping the end point', logger='current',
                      level=logging.WARNING)

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    def load_state_dict(self, state: dict, num_steps: int) -> None:
        """Restore :meth:`state_dict` (missing keys: the initial values); the step is clipped to
        ``num_steps`` (the path may have become shorter)."""
        self.step = min(int(state.get('step', 0)), num_steps)
        self.good_windows = int(state.get('good_windows', 0))
        self.stopped = bool(state.get('stopped', False))
        self.window_error = state.get('window_error')
        self.end_point_iter = state.get('end_point_iter')
