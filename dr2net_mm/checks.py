"""Argument validators shared by the whole package (standard library and torch only).

One exception type per kind of mistake:

* a value of a type the argument does not take -> :class:`ArgumentTypeError`;
* a value of the right type outside the allowed range -> ``ValueError``.

``ArgumentTypeError`` is a ``TypeError`` and also a ``ValueError``: some of these checks raised
``ValueError`` for a wrong type before they were merged here, and callers catching that keep working.
Every validator returns the checked (and normalised) value.
"""
import math
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    'ArgumentTypeError', 'STREAM_DTYPES', 'EXACT_STREAMS', 'check_bool', 'check_int',
    'check_positive', 'check_size',
    'check_indices', 'check_segment_size', 'parse_stream_dtype', 'check_coefficients'
]

STREAM_DTYPES = (torch.float32, torch.float64)
EXACT_STREAMS = 'exact'  # fixed-point streams with an exact β buffer (dr2net_mm.core.streams)
_STREAM_DTYPE_NAMES = {
    'float64': torch.float64, 'torch.float64': torch.float64, 'fp64': torch.float64,
    'double': torch.float64, 'float32': torch.float32, 'torch.float32': torch.float32,
    'fp32': torch.float32, 'float': torch.float32
}


class ArgumentTypeError(TypeError, ValueError):
    """An argument of a type the function does not take (also a ``ValueError``, see above)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 1, 'yes', None)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f'{name} must be True or False, got {value!r} '
                                f'({type(value).__name__})')
    return value


def check_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """An int ``>= minimum`` (bools are not ints here); None too with ``allow_none``."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise ArgumentTypeError(f'{name} must be an int >= {minimum}, got {value!r} '
                                f'({type(value).__name__})')
    if value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    return value


def check_positive(name: str, value: Any, allow_none: bool = False) -> Optional[float]:
    """A finite number ``> 0``, as a float; None too with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f'{name} must be a positive finite number, got {value!r} '
                                f'({type(value).__name__})')
    if not (value > 0) or math.isinf(value):  # also rejects NaN
        raise ValueError(f'{name} must be a positive finite number, got {value!r}')
    return float(value)


def check_size(name: str, value: Any) -> Tuple[int, int]:
    """A positive int or a ``(height, width)`` pair of them -> ``(height, width)``."""
    size = (value, value) if _is_int(value) else value
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
            _is_int(s) and s >= 1 for s in size):
        raise ValueError(f'{name} must be a positive int or an (height, width) pair of them, got '
                         f'{value!r}')
    return int(size[0]), int(size[1])


def check_indices(name: str, indices: Any, length: int) -> Tuple[int, ...]:
    """An index or a sequence of indices into ``length`` items (negative ones count from the end)
    -> an increasing tuple of distinct indices in ``[0, length)``."""
    raw = (indices, ) if _is_int(indices) else indices
    if not isinstance(raw, (tuple, list)) or not raw or not all(_is_int(i) for i in raw):
        raise ArgumentTypeError(f'{name} must be a block index or a non-empty sequence of block '
                                f'indices (ints), got {indices!r}')
    bad = [i for i in raw if not -length <= i < length]
    if bad:
        raise ValueError(f'{name}={indices!r}: block indices {bad} are out of range for '
                         f'depth={length} (valid: 0..{length - 1}, or -{length}..-1 from the end)')
    normalized = tuple(i % length for i in raw)
    if list(normalized) != sorted(set(normalized)):
        raise ValueError(f'{name}={indices!r} must name distinct blocks in increasing order (got '
                         f'blocks {normalized} after resolving negative indices)')
    return normalized


def check_segment_size(value: Any) -> Optional[int]:
    """None (one segment per reversible stage) or an int >= 1 (residual branches per segment)."""
    if value is None:
        return None
    if not _is_int(value):
        raise ArgumentTypeError(f'segment_size must be None or an int >= 1, got {value!r} '
                                f'({type(value).__name__})')
    if value < 1:
        raise ValueError(f'segment_size={value} must be >= 1 (or None: one segment per stage)')
    return value


def parse_stream_dtype(value: Union[torch.dtype, str]) -> Union[torch.dtype, str]:
    """A stream representation: ``'exact'`` (fixed point with an exact β buffer: bit-exact rebuilds,
    the default) or a float dtype of :data:`STREAM_DTYPES`, given as a ``torch.dtype`` or by name
    (configs are text: 'exact', 'float64', 'float32', ...). Returns ``'exact'`` or the dtype."""
    choices = ("use 'exact' (bit-exact rebuilds, the default), 'float64' or 'float32' (or "
               "torch.float64 / torch.float32)")
    if isinstance(value, str):
        name = value.strip().lower()
        if name == EXACT_STREAMS:
            return EXACT_STREAMS
        if name not in _STREAM_DTYPE_NAMES:
            raise ArgumentTypeError(f'stream_dtype={value!r} is not supported; {choices}')
        return _STREAM_DTYPE_NAMES[name]
    if not isinstance(value, torch.dtype):
        raise ArgumentTypeError(f"stream_dtype must be 'exact', torch.float64 or torch.float32 (or "
                                f'their names), got {value!r} ({type(value).__name__})')
    if value not in STREAM_DTYPES:
        raise ArgumentTypeError(f'stream_dtype={value} is not supported; {choices}')
    return value


def check_coefficients(alpha: float, beta: float, reversible: bool) -> Tuple[float, float]:
    """Validate (α, β) and return them as Python floats."""
    values = []
    for name, value in (('alpha', alpha), ('beta', beta)):
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f'{name} must be a single number, got a tensor of shape '
                                 f'{tuple(value.shape)}')
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentTypeError(f'{name} must be a number in [0, 1], got {value!r} '
                            f'({type(value).__name__})')
        value = float(value)
        if not (0.0 <= value <= 1.0):  # also rejects NaN
            raise ValueError(f'{name}={value} is outside [0, 1]; Dr²Net coefficients are '
                             f'residual weights in [0, 1] (start (1, 0.1), e.g. end (0.3, 0.7))')
        values.append(value)
    if reversible and values[1] <= 0.0:
        raise ValueError(
            f'beta={values[1]} must be > 0 when reversible=True: the backward rebuilds '
            f'x_(i-1) = y_i / beta. Use beta > 0 (the paper starts at 0.1), or reversible=False '
            f'for the exact pretrained network at beta=0.')
    return values[0], values[1]
