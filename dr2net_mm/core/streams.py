"""How a reversible stage holds its streams ``(x, y)``: representation and Eq. 1/2 arithmetic.

This module is the one place that decides it; the engine asks a stream *arithmetic* for every
operation on the streams (``stream_dtype`` picks one)::

    start(x0)                  -> (x_0, y_0 = β·x_0)
    branch_input(x)            -> F's input in the model dtype
    next_x(f, x, y)            -> x_i             Eq. 1: x_i = f + α·x + y
    next_y(x)                  -> y_i             Eq. 1: y_i = β·x
    undo_beta(y)               -> x_{i-1}         Eq. 2, in place on y's buffer
    undo_step(x, f, x_prev)    -> y_{i-1}         Eq. 2, in place on x's buffer
    begin_segment / end_segment / load_segment     per-segment state (the exact β buffer)
    pack(x, shared) / unpack(packed, shared)       what a kept stream costs
    finish_forward() / check_forward()             the range check of exact streams, at the end of
                                                   the forward and at the first backward node

Two arithmetics:

* ``'exact'`` (:class:`ExactStreams` in ``exact_streams``, the default): fixed-point int64 streams
  (``fixed_point``), F's output and α·x rounded onto the grid, and ``y = β·x`` made exactly invertible
  by a per-element buffer of the discarded bits. Eq. 2 then rebuilds every stream **bit for bit** at any
  (α, β), so one segment per stage is precise; the kept buffer costs about ``log2(1/β)`` bits per
  element and function, the information-theoretic minimum. Streams must stay within ``|x| < 2^21``.
* ``torch.float64`` / ``torch.float32`` (:class:`FloatStreams`): Eq. 1/2 in that dtype. Eq. 2 amplifies
  rounding by about (‖J‖ + α)/β per function (~11x at (1, 0.1)), which ``segment_size`` bounds.

Kept float64 streams with a float32 ``shared`` value (the stage output, which its consumer keeps anyway)
cost that value plus a float32 remainder: ``x ≈ hi + lo``, ``hi = fp32(x)``, ``lo = fp32(x − hi)``
(48 significant bits in 4 new bytes per element).
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..checks import EXACT_STREAMS
from .exact_streams import ExactStreams

EXACT = EXACT_STREAMS
StreamDtype = Union[torch.dtype, str]

_TIE_BREAK = 1.0 + 2.0**-30


def branch_input(stream: Tensor, dtype: torch.dtype) -> Tensor:
    """A float stream as F_i's input in the model dtype: ``fp32(x·(1 + 2^-30))`` for float64.

    A float64 stream built from float32 values (x_0 plus branch outputs) often lies exactly half-way
    between two float32 numbers. A rebuilt stream one float64 ulp off then rounds the other way, F_i
    sees an input one float32 ulp off, and the inverse amplifies that ~1e-7 error. Scaling by
    1 + 2^-30 first moves every such tie 2^-30 (relative) to one side: far more than a rebuild error
    (~2^-52), far less than half a float32 ulp (2^-25). The forward rounds the same way, so every
    mode computes the same network; it differs from round-to-nearest only in how ties break.
    """
    if stream.dtype == torch.float64 and dtype != torch.float64:
        return (stream * _TIE_BREAK).to(dtype)
    return stream.to(dtype)


def dual_residual_step(f: Tensor, x: Tensor, y: Optional[Tensor], alpha: float) -> Tensor:
    """Eq. 1's new x stream in float: ``x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1}`` (``y=None``: 0).

    ``x`` and ``y`` are in the stream dtype; ``f`` may be in the model dtype (promoted exactly on the
    fly). One definition for the reversible and the plain forward, so they do bitwise the same
    arithmetic."""
    out = f + x if alpha == 1.0 else f + alpha * x
    return out if y is None else out.add_(y)


def _splits(stream_dtype: torch.dtype, shared: Optional[Tensor]) -> bool:
    """Whether a stream of ``stream_dtype`` is kept as ``shared`` plus a float32 remainder."""
    return shared is not None and stream_dtype == torch.float64 and shared.dtype == torch.float32


def pack_stream(stream: Tensor, shared: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
    """Tensors to save for a float ``stream``; ``shared`` is it rounded to the output dtype, or None."""
    if shared is not None and stream.dtype == shared.dtype:
        return ()  # the output is the stream itself: nothing new to keep
    if _splits(stream.dtype, shared):
        return ((stream - shared.to(torch.float64)).to(torch.float32), )
    return (stream, )


def unpack_stream(packed: Tuple[Tensor, ...], shared: Optional[Tensor],
                  stream_dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`pack_stream`: the stream in ``stream_dtype``."""
    if not packed:
        return shared.to(stream_dtype)
    if _splits(stream_dtype, shared):
        return shared.to(torch.float64) + packed[0].to(torch.float64)
    return packed[0].to(stream_dtype)


class FloatStreams:
    """Eq. 1/2 in float64 or float32; each F_i runs in the model dtype (see :func:`branch_input`)."""
    exact = False

    def __init__(self, dtype: torch.dtype, alpha: float, beta: float, model_dtype: torch.dtype):
        self.dtype, self.alpha, self.beta, self.model_dtype = dtype, alpha, beta, model_dtype

    def start(self, x0: Tensor) -> Tuple[Tensor, Tensor]:
        x = x0.to(self.dtype)
        return x, self.initial_y(x)

    def initial_y(self, x: Tensor) -> Tensor:
        return self.beta * x

    def initial_y_residual(self, y: Tensor, x: Tensor) -> Tensor:
        """``y − β·x`` (0 for the true pair (x_0, y_0)), in place on ``y``."""
        return y.sub_(x, alpha=self.beta)

    def branch_input(self, x: Tensor) -> Tensor:
        return branch_input(x, self.model_dtype)

    def next_x(self, f: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return dual_residual_step(f, x, y, self.alpha)

    def next_y(self, x: Tensor) -> Tensor:
        return self.beta * x

    def undo_beta(self, y: Tensor) -> Tensor:
        return y.div_(self.beta)

    def undo_step(self, x: Tensor, f: Tensor, x_prev: Tensor) -> Tensor:
        return x.sub_(f).sub_(x_prev, alpha=self.alpha)

    def output(self, x: Tensor) -> Tensor:
        return x.to(self.model_dtype)

    def as_float64(self, stream: Tensor) -> Tensor:
        """Stream values as float64 numbers (for the monitor)."""
        return stream.to(torch.float64)

    def pack(self, x: Tensor, shared: Optional[Tensor]) -> Tuple[Tensor, ...]:
        return pack_stream(x, shared)

    def unpack(self, packed: Tuple[Tensor, ...], shared: Optional[Tensor]) -> Tensor:
        return unpack_stream(packed, shared, self.dtype)

    # Float streams have no per-segment state.
    def begin_segment(self, like: Tensor) -> None:
        pass

    def end_segment(self, position: int) -> Tuple[Tensor, ...]:
        return ()

    def load_segment(self, position: int, packed: Tuple[Tensor, ...], like: Tensor,
                     consume: bool = False) -> None:
        pass

    def segment_undone(self) -> Optional[Tensor]:
        return None

    def finish_forward(self) -> bool:
        return True

    def check_forward(self) -> None:
        pass


def stream_arithmetic(stream_dtype: StreamDtype, alpha: float, beta: float,
                      model_dtype: torch.dtype, owner=None):
    """The arithmetic for ``stream_dtype`` (``'exact'``, ``torch.float64`` or ``torch.float32``);
    ``owner``: the stage whose reversible forward it serves (exact streams then check their range
    without host syncs, NOTE [ Deferred range checks ] in ``exact_streams``)."""
    if stream_dtype == EXACT:
        return ExactStreams(alpha, beta, model_dtype, owner=owner)
    return FloatStreams(stream_dtype, alpha, beta, model_dtype)
