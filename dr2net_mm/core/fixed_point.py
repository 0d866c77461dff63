"""Fixed-point stream values: the grid on which exact streams live, and exact products with α and β.

A stream value ``x`` is held as the int64 ``X = round(x·2^FRACTION_BITS)``, i.e. on the grid
``2^-40`` (about 9e-13), which is finer than float32's resolution for every ``|x| > 2^-16``. Sums and
differences of grid values are exact integer arithmetic, so they are exactly undone.

Products by coefficients need only be *deterministic* where Eq. 2 recomputes them from an exactly
rebuilt stream (``α·x``): :func:`add_scaled_` rounds the float64 product, which IEEE arithmetic makes
the same on every device. ``β·x`` must be exactly invertible (``beta_buffer``), which needs β as a
fraction ``n/d``: the nearest one with ``d <= 2^10`` (:func:`beta_fraction`: 1/10, 7/10 and 1/100
exactly; any β within 1/(2^10·d) <= 5e-4, closer away from simple fractions), so that the invertible
product is off by at most ``n`` grid units (``<= 2^10·2^-40 ≈ 1e-9``). Its plain rounded-down form is exact integer arithmetic::

    scale_floor(X, n, d) = floor(X·n/d) = q·n + floor(r·n/d)     (X = q·d + r, 0 <= r < d)

Range. ``|X|`` must stay below ``LIMIT = 2^61`` (``|x| < 2^21 ≈ 2.1e6``): then a sum of three stream
terms and every intermediate product stays inside int64. :func:`magnitude` gives what the caller
compares against :data:`MAX_VALUE`.
"""
from fractions import Fraction
from typing import Tuple

import torch
from torch import Tensor

FRACTION_BITS = 40
BETA_MAX_DENOMINATOR = 1 << 10
LIMIT = 1 << 61
MAX_VALUE = float(LIMIT >> FRACTION_BITS)  # 2^21: the largest |x| a fixed-point stream holds

_SCALE = float(1 << FRACTION_BITS)


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


# Conversions run over chunks of 1/CHUNKS of a tensor (at least MIN_CHUNK elements), so that their
# float64 and int64 temporaries cost about 2 bytes per stream element instead of 16.
CHUNKS = 8
MIN_CHUNK = 1 << 16


def _chunks(*tensors: Tensor):
    """Matching flat chunks of same-shaped tensors (views where the tensors are contiguous)."""
    flat = [t.reshape(-1) for t in tensors]
    numel = flat[0].numel()
    size = max(MIN_CHUNK, -(-numel // CHUNKS))
    for start in range(0, numel, size):
        yield [t[start:start + size] for t in flat]


def add_grid_values_(fixed: Tensor, values: Tensor, sign: int = 1) -> Tensor:
    """``X += sign·round(values·2^40)`` in place (round half to even). ``values`` must be finite with
    ``|values| < 2^21`` (check with :func:`magnitude`); others give meaningless integers, no error."""
    if not fixed.is_contiguous():
        raise ValueError('add_grid_values_ needs a contiguous fixed-point tensor')
    for out, part in _chunks(fixed, values):
        grid = part.to(torch.float64, copy=True).mul_(_SCALE).round_().to(torch.int64)
        out.add_(grid, alpha=sign)
    return fixed


def add_scaled_(fixed: Tensor, source: Tensor, factor: float, sign: int = 1) -> Tensor:
    """``X += sign·round(float64(S)·factor)`` in place: deterministic on every device."""
    if not fixed.is_contiguous():
        raise ValueError('add_scaled_ needs a contiguous fixed-point tensor')
    if factor == 0.0:
        return fixed
    for out, part in _chunks(fixed, source):
        out.add_(part.to(torch.float64).mul_(factor).round_().to(torch.int64), alpha=sign)
    return fixed


def to_fixed(x: Tensor) -> Tensor:
    """``round(x·2^40)`` as a new int64 tensor (see :func:`add_grid_values_`)."""
    return add_grid_values_(torch.zeros(x.shape, dtype=torch.int64, device=x.device), x)


def from_fixed(fixed: Tensor, dtype: torch.dtype) -> Tensor:
    """``X·2^-40`` in ``dtype`` (through float64: deterministic, within one ``dtype`` rounding of the
    exact value for float32 and narrower)."""
    out = torch.empty(fixed.shape, dtype=dtype, device=fixed.device)
    for target, part in _chunks(out, fixed):
        target.copy_(part.to(torch.float64).div_(_SCALE))
    return out


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
    return peak / _SCALE if value.dtype == torch.int64 else peak
