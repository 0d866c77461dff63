"""The plain forward of a stage: Eq. 1 with ordinary autograd, or with none.

``ReversibleSequence`` runs it in reference mode (``reversible=False``), in eval mode and under
``torch.no_grad()``. It is the exact reference the reversible backward is tested against.
"""
from typing import Any, List, Tuple, Union

import torch
from torch import Tensor, nn

from .chunks import check_branch_output, run_branch
from .streams import EXACT, branch_input, dual_residual_step, stream_arithmetic


def _with_value(tensor: Tensor, value: Tensor) -> Tensor:
    """``value`` with ``tensor``'s gradient path: ``value + (tensor − tensor.detach())``."""
    if not tensor.requires_grad:
        return value
    return value + (tensor - tensor.detach())


def plain_forward(stage: nn.Module, x0: Tensor, args: Tuple[Any, ...], positions: Tuple[int, ...],
                  stream_dtype: Union[torch.dtype, str]) -> List[Tensor]:
    """Eq. 1 over ``stage.functions`` with ordinary autograd (or none, under no_grad); the streams
    ``x_k`` at ``positions`` in the dtype of ``x0``. In training with gradients the branches run by
    their plans, as in the reversible mode (the same F in both).

    Exact streams cannot carry autograd (integers): the gradient runs through float64 streams
    while the values come from exact streams run alongside, without gradient (each F input and
    output is ``exact value + (float64 value − its detached self)``). So the reference computes
    bitwise the reversible mode's values and ordinary autograd's gradients of them."""
    alpha, beta = stage.alpha, stage.beta
    by_parts = stage.training and torch.is_grad_enabled()
    exact = None
    if stream_dtype == EXACT:
        exact, stream_dtype = stream_arithmetic(EXACT, alpha, beta, x0.dtype), torch.float64
        with torch.no_grad():
            ex, ey = exact.start(x0)
    x = x0.to(stream_dtype)
    y = beta * x if beta != 0.0 else None
    segment_ends = stage.segment_boundaries()
    outputs = []
    for i, function in enumerate(stage.functions, 1):
        inp = branch_input(x, x0.dtype)
        if exact is not None:
            if i == 1 or i - 1 in segment_ends:
                exact.begin_segment(ex)
            inp = _with_value(inp, exact.branch_input(ex))
        f = run_branch(function, inp, args) if by_parts else function(inp, *args)
        check_branch_output(i, function, inp, f)
        if exact is not None:
            with torch.no_grad():
                ex_new = exact.next_x(f, ex, ey)
                ex, ey = ex_new, exact.next_y(ex)
        x, y = dual_residual_step(f.to(stream_dtype), x, y, alpha), \
            (beta * x if beta != 0.0 else None)
        if i in positions:
            outputs.append(x.to(x0.dtype) if exact is None else
                           _with_value(x.to(x0.dtype), exact.output(ex)))
    if exact is not None and not exact.finish_forward():
        outputs = [out + float('nan') for out in outputs]
    return outputs
