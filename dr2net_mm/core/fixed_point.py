"""Fixed-point stream values: the grid on which exact streams live, and β as a small fraction.

A stream value ``x`` is held as the int64 ``X = round(x·2^FRACTION_BITS)``, i.e. on the grid
``2^-40`` (about 9e-13), which is finer than float32's resolution for every ``|x| > 2^-16``. Sums and
differences of grid values are exact integer arithmetic, so they are exactly undone.

Products by coefficients need only be *deterministic* where Eq. 2 recomputes them from an exactly
rebuilt stream (``α·x``): ``round(float64(X)·α)`` is the same on every device (IEEE arithmetic).
``β·x`` must be exactly invertible (``exact_streams``), which needs β as a fraction ``n/d``: the
nearest one with ``d <= 2^10`` (:func:`beta_fraction`: 1/10, 7/10 and 1/100 exactly; any β within
1/(2^10·d) <= 5e-4, closer away from simple fractions), so that the invertible product is off by at
most ``n`` grid units (``<= 2^10·2^-40 ≈ 1e-9``). Its plain rounded-down form is exact integer
arithmetic::

    scale_floor(X, n, d) = floor(X·n/d) = q·n + floor(r·n/d)     (X = q·d + r, 0 <= r < d)

Range. ``|X|`` must stay below ``LIMIT = 2^61`` (``|x| < 2^21 ≈ 2.1e6``): then a sum of three stream
terms and every intermediate product stays inside int64. :func:`magnitude` gives what the caller
compares against :data:`MAX_VALUE`.
"""
from fractions import Fraction
from typing import List, Tuple

import torch
from torch import Tensor

FRACTION_BITS = 40
BETA_MAX_DENOMINATOR = 1 << 10
LIMIT = 1 << 61
MAX_VALUE = float(LIMIT >> FRACTION_BITS)  # 2^21: the largest |x| a fixed-point stream holds

SCALE = float(1 << FRACTION_BITS)  # a stream value x is the integer X = round(x·SCALE)


def beta_fraction(beta: float) -> Tuple[int, int]:
    """β in [0, 1] as the nearest ``(n, d)`` with ``d <= 2^10``, in lowest terms; β > 0 gives n >= 1
    (β = 0, the pretrained network, gives (0, 1))."""
    if beta == 0:
        return 0, 1
    fraction = Fraction(beta).limit_denominator(BETA_MAX_DENOMINATOR)
    if fraction.numerator == 0:
        return 1, BETA_MAX_DENOMINATOR
    return fraction.numerator, fraction.denominator


def nearest_beta(coefficients: Tuple[float, float]) -> Tuple[float, float]:
    """(α, β) with β > 0 replaced by the fraction n/d of :func:`beta_fraction`, the number exact
    streams multiply by, so that every stream mode computes the same network."""
    alpha, beta = coefficients
    if beta > 0:
        numerator, denominator = beta_fraction(beta)
        beta = numerator / denominator
    return alpha, beta


# The stream arithmetic runs over at most CHUNKS equal parts of a tensor (of at least MIN_CHUNK
# elements each, so that a part is worth its Python calls; larger parts measured slower on a CPU:
# 1.15× against 1.08× with_cp for Swin 2-2-18-2 at 512² with 2^17), so that its float64 and int64
# temporaries cost about 4 bytes per stream element instead of 32.
CHUNKS = 8
MIN_CHUNK = 1 << 16


def grid_parts(numel: int) -> List[slice]:
    """The parts, as slices of a flattened tensor of ``numel`` elements, that a conversion between
    stream values and the grid runs over (``ExactStreams``)."""
    size = -(-numel // max(1, min(CHUNKS, numel // MIN_CHUNK)))
    return [slice(start, start + size) for start in range(0, numel, size)]


def scale_floor(fixed: Tensor, numerator: int, denominator: int) -> Tensor:
    """``floor(X·n/d)`` exactly, for ``|X| < 2^61`` and ``0 <= n <= d <= 2^24``."""
    if numerator == denominator:
        return fixed.clone()
    if numerator == 0:
        return torch.zeros_like(fixed)
    quotient = torch.div(fixed, denominator, rounding_mode='floor')
    remainder = (quotient * -denominator).add_(fixed).mul_(numerator)
    return quotient.mul_(numerator).add_(remainder.div_(denominator, rounding_mode='floor'))


def magnitude(value: Tensor) -> Tensor:
    """``max |value|`` as a 0-dim float64 tensor (NaN if ``value`` has a NaN; no host sync). For an
    int64 (fixed-point) tensor the result is in stream units (``|X|·2^-40``)."""
    if value.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=value.device)
    low, high = torch.aminmax(value)  # no |value| temporary; NaN propagates
    peak = torch.maximum(high.to(torch.float64), low.to(torch.float64).neg())
    return peak / SCALE if value.dtype == torch.int64 else peak
