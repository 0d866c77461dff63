"""The reconstruction-error monitor: how far one reversible backward's rebuilt streams are off.

Per segment, after Eq. 2 has rebuilt the segment's input streams (see ``ReversibleSequence``):

* the first segment (input position 0): the rebuilt pair must satisfy ``y_0 = β·x_0``, so its error
  is ``‖y_0' − β·x_0'‖ / (β·‖x_0‖)`` (``‖x_0‖`` is kept from the forward, one scalar);
* a later segment (input position b, whose streams the forward kept):
  ``max(‖x_b' − x_b‖/‖x_b‖, ‖y_b' − y_b‖/‖y_b‖)``;
* exact streams: also 1 if the segment's β buffer did not return to 0.

A forward that met a non-finite value makes every segment's error NaN. Each value is a 0-dim float64
tensor (a few reductions, no host sync); the stage gets the stack of all segments recorded so far.
"""
from typing import Callable, Dict

import torch
from torch import Tensor

_TINY = torch.finfo(torch.float64).tiny


def relative_norm(error: Tensor, reference: Tensor) -> Tensor:
    """‖error‖ / ‖reference‖ as a 0-dim float64 tensor (no host sync)."""
    ref = torch.linalg.vector_norm(reference, dtype=torch.float64)
    return torch.linalg.vector_norm(error, dtype=torch.float64) / ref.clamp_min(_TINY)


class ReconstructionMonitor:
    """The per-segment reconstruction errors of one reversible backward.

    ``streams`` is the stage call's stream arithmetic (``streams`` module); ``publish`` receives the
    errors recorded so far, by segment input position, after each record."""

    def __init__(self, streams, publish: Callable[[Tensor], None]):
        self.streams = streams
        self.publish = publish
        # False: the forward met a non-finite value (exact streams); or a 0-dim tensor, 0 or NaN,
        # when the check is deferred (NOTE [ Deferred range checks ] in exact_streams)
        self.forward_finite = True
        self.errors: Dict[int, Tensor] = {}

    def check_kept_input(self, position: int, rebuilt_x: Tensor, rebuilt_y: Tensor, x: Tensor,
                         y: Tensor) -> None:
        """The segment starting at ``position``: the rebuilt streams against the kept ``(x, y)``
        (the rebuilt tensors are overwritten)."""
        error_x, error_y = self._distance(rebuilt_x, x), self._distance(rebuilt_y, y)
        self.record(position, torch.maximum(error_x, error_y))

    def check_first_input(self, x0: Tensor, y0: Tensor, x0_norm: Tensor, beta: float) -> None:
        """The first segment: ``y_0' = β·x_0'`` for the rebuilt pair (``y0`` is overwritten)."""
        residual = self.streams.as_float64(self.streams.initial_y_residual(y0, x0))
        self.record(0, torch.linalg.vector_norm(residual)
                    / (beta * x0_norm.to(torch.float64)).clamp_min(_TINY))

    def record(self, segment_start: int, error: Tensor) -> None:
        """Record one segment's error, with its β-buffer check, and publish all recorded so far."""
        undone = self.streams.segment_undone()  # exact streams: the β buffer is back to 0
        if undone is not None:
            error = torch.maximum(error, (~undone).to(error.dtype))
        if isinstance(self.forward_finite, Tensor):  # a deferred check: 0, or NaN if not finite
            error = error + self.forward_finite
        elif not self.forward_finite:
            error = torch.full((), float('nan'), dtype=torch.float64, device=error.device)
        self.errors[segment_start] = error.detach()
        self.publish(torch.stack([self.errors[k] for k in sorted(self.errors)]))

    def _distance(self, rebuilt: Tensor, kept: Tensor) -> Tensor:
        """‖rebuilt − kept‖ / ‖kept‖ in float64 (``rebuilt`` is overwritten)."""
        as_float64 = self.streams.as_float64
        return relative_norm(as_float64(rebuilt.sub_(kept)), as_float64(kept))
