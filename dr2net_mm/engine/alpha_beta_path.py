r"""The path of Dr²Net's coefficients (α, β) during finetuning (Zhao et al., CVPR 2024, §3.3.2): pure
math, no MMEngine. :class:`~dr2net_mm.engine.alpha_beta_hook.AlphaBetaHook` walks it.

**Path.** The coefficients move from ``start`` to ``end`` (α non-increasing, β non-decreasing) as a
function of a progress ``p ∈ [0, 1]``, and stay at ``end`` afterwards. The paper starts every
finetuning at (α, β) = (1, 0.1) (§3.3.1: α = 1 keeps the pretrained residuals, β = 0.1 is the smallest
β that trains well); (0.3, 0.7) is its example update end point (§3.3.2 / Fig. 3).

**Quantised progress.** Values change only every ``interval`` (η) iterations. At iteration ``t``
(0-based) the last update step is ``q = floor(t / η)·η`` and ``p = min(1, q / τ)``, τ the end of the
path in iterations (:func:`progress`). So ``p = 0`` (exactly ``start``) for ``t < η`` and ``p = 1``
(exactly ``end``) from the first update step ``≥ τ``, i.e. from ``ceil(τ/η)·η`` (= τ when η divides
τ). The values are a pure function of ``t``.

**Policy** (Table 12) maps ``p`` to a fraction ``f(p)`` of the way, with ``f(0) = 0``, ``f(1) = 1``,
strictly increasing; ``k`` = ``curvature`` (:func:`policy_curve`):

- ``'linear'`` (the paper's choice): ``f(p) = p``;
- ``'exp'``: ``f(p) = (e^{k·p} − 1) / (e^k − 1)``, convex: slow first, fast near τ;
- ``'log'``: ``f(p) = ln(1 + (e^k − 1)·p) / k``, concave: fast first, slow near τ (the inverse
  function of ``'exp'``).

**Schedule** (Tables 8-10), with ``clip(x) = min(1, max(0, x))``:

- ``'simultaneous'`` (the paper's choice, the diagonal of Fig. 3): α and β both move with ``f(p)``;
- ``'alpha_first'``: α moves over the first half of the progress (``f(clip(2p))``) while β stays at
  its start, then β moves over the second half (``f(clip(2p − 1))``) while α stays at its end;
- ``'beta_first'``: the same with the roles exchanged.

So ``α(p) = α_s + (α_e − α_s)·f_α(p)`` and ``β(p) = β_s + (β_e − β_s)·f_β(p)``, exactly ``α_e`` /
``β_e`` once ``f = 1`` (:meth:`AlphaBetaPath.point`).
"""
import math
from typing import Any, Sequence, Tuple

from ..checks import ArgumentTypeError, check_positive
from ..core import check_coefficients

__all__ = ['POLICIES', 'SCHEDULES', 'AlphaBetaPath', 'policy_curve', 'progress']

POLICIES = ('linear', 'exp', 'log')
SCHEDULES = ('simultaneous', 'alpha_first', 'beta_first')


def policy_curve(policy: str, curvature: float, p: float) -> float:
    """The policy's f: [0, 1] → [0, 1], f(0) = 0, f(1) = 1, increasing."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if policy == 'linear':
        return p
    k = curvature
    if policy == 'exp':
        value = math.expm1(k * p) / math.expm1(k)
    else:  # 'log'
        value = math.log1p(math.expm1(k) * p) / k
    return min(1.0, max(0.0, value))


def progress(iteration: int, interval: int, tau: int) -> float:
    """``p = min(1, floor(t/η)·η / τ)`` for iteration ``t`` (an int ≥ 0)."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f'iteration must be an int >= 0, got {iteration!r}')
    return min(1.0, (iteration // interval) * interval / tau)


def _check_pair(name: str, value: Any) -> Tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ArgumentTypeError(f'{name} must be an (alpha, beta) pair, got {value!r}')
    try:
        # β > 0 is checked against the model when training starts (a reference-mode model may use
        # β = 0); the stages check every value set on them.
        return check_coefficients(value[0], value[1], reversible=False)
    except (TypeError, ValueError) as error:
        raise type(error)(f'{name}={tuple(value)!r}: {error}') from None


class AlphaBetaPath:
    """The path from ``start`` to ``end`` under a ``policy`` and a ``schedule`` (module docstring).

    Args:
        start, end: (α, β) pairs in [0, 1]; ``end`` must not be before ``start`` (α_end ≤ α_start,
            β_end ≥ β_start).
        policy: 'linear', 'exp' or 'log'.
        schedule: 'simultaneous', 'alpha_first' or 'beta_first'.
        curvature: ``k`` of the 'exp'/'log' policies (> 0).
    """

    def __init__(self, start: Sequence[float] = (1.0, 0.1), end: Sequence[float] = (0.3, 0.7),
                 policy: str = 'linear', schedule: str = 'simultaneous', curvature: float = 5.0):
        self.start = _check_pair('start', start)
        self.end = _check_pair('end', end)
        if self.end[0] > self.start[0] or self.end[1] < self.start[1]:
            raise ValueError(
                f'end={self.end} is before start={self.start}: Dr²Net finetuning moves alpha down and '
                f'beta up (alpha_end <= alpha_start and beta_end >= beta_start), e.g. start=(1.0, 0.1), '
                f'end=(0.3, 0.7)')
        if policy not in POLICIES:
            raise ValueError(f'unknown policy {policy!r}; choose one of {POLICIES}')
        if schedule not in SCHEDULES:
            raise ValueError(f'unknown schedule {schedule!r}; choose one of {SCHEDULES}')
        self.policy = policy
        self.schedule = schedule
        self.curvature = check_positive('curvature', curvature)

    def curve(self, p: float) -> float:
        """This path's policy curve f(p)."""
        return policy_curve(self.policy, self.curvature, p)

    def point(self, p: float) -> Tuple[float, float]:
        """(α, β) at progress ``p ∈ [0, 1]`` of the path (clipped to [0, 1])."""
        p = min(1.0, max(0.0, float(p)))
        if self.schedule == 'simultaneous':
            fa = fb = self.curve(p)
        elif self.schedule == 'alpha_first':
            fa, fb = self.curve(min(1.0, 2.0 * p)), self.curve(max(0.0, 2.0 * p - 1.0))
        else:  # 'beta_first'
            fb, fa = self.curve(min(1.0, 2.0 * p)), self.curve(max(0.0, 2.0 * p - 1.0))
        (a0, b0), (a1, b1) = self.start, self.end
        alpha = a1 if fa >= 1.0 else min(a0, max(a1, a0 + (a1 - a0) * fa))
        beta = b1 if fb >= 1.0 else max(b0, min(b1, b0 + (b1 - b0) * fb))
        return alpha, beta

    def point_at(self, iteration: int, interval: int, tau: int) -> Tuple[float, float]:
        """(α, β) at training iteration ``iteration`` when updated every ``interval`` iterations and
        ending at ``tau`` (:func:`progress`)."""
        return self.point(progress(iteration, interval, tau))
