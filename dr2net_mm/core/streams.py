"""How a reversible stage keeps its streams between forward and backward.

A stage keeps only the streams ``(x, y)`` at the end of each segment. This module is the one place that
decides their representation, so another one (e.g. fixed point plus a buffer of the bits that β
discards) can replace it without touching the engine or the backbones:

    pack_stream(stream, shared)   -> tuple of tensors to save for backward
    unpack_stream(packed, shared, stream_dtype) -> the stream again, in ``stream_dtype``

``shared`` is the same stream already rounded to the model dtype that the stage returns as an output
(or ``None``): whoever consumes that output usually keeps it for its own backward (an output norm, the
next stage's first layer), so saving it again would store it twice. A float64 stream with a float32
``shared`` value is kept as that value plus a float32 remainder::

    x ≈ hi + lo,   hi = fp32(x) (= shared),   lo = fp32(x − hi)

which holds 48 significant bits (relative error ≤ 2^-48 ≈ 3.6e-15) in 4 new bytes per element instead
of 8.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def _splits(stream_dtype: torch.dtype, shared: Optional[Tensor]) -> bool:
    """Whether a stream of ``stream_dtype`` is kept as ``shared`` plus a float32 remainder."""
    return shared is not None and stream_dtype == torch.float64 and shared.dtype == torch.float32


def pack_stream(stream: Tensor, shared: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
    """Tensors to save for ``stream``; ``shared`` is ``stream`` rounded to the output dtype, or None."""
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
