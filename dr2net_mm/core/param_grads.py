"""Where the parameter gradients of a recomputed branch go, and how few bytes they take on the way.

The reversible backward recomputes a branch ``F_i`` and back-propagates through it inside the backward
of the stage's own autograd node. Ordinary autograd would return all of ``F_i``'s parameter gradients
at once from that node (the whole branch's parameters as a transient, e.g. 32 MB for a ViT-L MLP).
Instead, while the branch is recomputed its parameters are replaced by *proxies* (detached aliases of
the same storage) whose gradients land directly in their targets:

* ``nn.Linear`` weights and biases (every ``F.linear`` on a proxy, outside autocast) run through
  :class:`_LinearInto`, whose backward adds ``g^T·x`` into the target with ``addmm_``: no weight-sized
  gradient is ever allocated;
* any other proxy gets the target as its ``.grad``, so autograd's accumulation adds into it in place.

Where each parameter's gradient goes is decided once per node and parameter, as
:func:`gradients_into` starts (see NOTE [ Parameter-gradient targets ]).
"""
import enum
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


class _LinearInto(torch.autograd.Function):
    """``F.linear(x, w, b)`` whose backward adds the weight/bias gradients into given buffers."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], w_into: Optional[Tensor],
                b_into: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.into = (w_into, b_into)
        # F.linear of a batched x returns a view of its 2-D product, and autograd refuses in-place
        # ops (an in-place activation in the branch) on a view made inside a custom Function; the
        # same product reshaped with _unsafe_view, as aten's linear does, is no view.
        out = F.linear(x.reshape(-1, x.shape[-1]), weight, bias)
        return torch.ops.aten._unsafe_view(out, (*x.shape[:-1], weight.shape[0]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        w_into, b_into = ctx.into
        g2 = grad.reshape(-1, grad.shape[-1])
        if w_into is not None:
            w_into.addmm_(g2.t(), x.reshape(-1, x.shape[-1]))
        if b_into is not None:
            b_into.add_(g2.sum(0))
        grad_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


class _RouteLinear(TorchFunctionMode):
    """Sends ``F.linear`` calls whose weight is a proxy through :class:`_LinearInto`."""

    targets: Dict[int, Optional[Tensor]]  # id(proxy) -> the buffer its gradient is added into

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is torch._C._nn.linear:
            names = ('input', 'weight', 'bias')
            x, weight, bias = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
            if id(weight) in self.targets and (bias is None or id(bias) in self.targets):
                b_into = self.targets[id(bias)] if bias is not None else None
                return _LinearInto.apply(x, weight, bias, self.targets[id(weight)], b_into)
        return func(*args, **kwargs)


# NOTE [ Parameter-gradient targets ]
#
# The node of F_i takes F_i's trainable parameters as inputs, so that autograd, and the search of
# DistributedDataParallel for unused parameters, sees them reached. Who asked for their gradients
# is known only while the backward runs: the engine is asked about each parameter's
# gradient-accumulator node (its entry in the node's ``next_functions``), once, as
# :func:`gradients_into` starts, and the answer is one of
#
#   GradTarget.INTO_GRAD  ``loss.backward()``: the engine will run the accumulator, i.e. add into
#                         ``.grad``. The recomputation adds straight into ``param.grad`` (zeros
#                         first if it is None) and the node returns None for the parameter;
#                         the parameter's hooks (DistributedDataParallel's) still fire once, when
#                         autograd reaches its accumulator.
#   GradTarget.RETURNED   ``torch.autograd.grad(..., inputs=[..., param])`` captures the gradient
#                         instead of running the accumulator (the engine query raises for it): the
#                         recomputation adds into a fresh zero buffer, which the node returns.
#   GradTarget.UNUSED     the engine will not reach the accumulator (``torch.autograd.grad``
#                         without this parameter), or the node got no dL/dx_i: nothing computed.
#
# ``gradients_into`` then sends the recomputation's parameter gradients to those buffers.
#
# Side inputs of the stage (NOTE [ Side inputs ] in ``stage_call``) are not asked about: their
# gradients are computed whenever they require grad and returned by node 1.


class GradTarget(enum.Enum):
    """Where one parameter's gradient goes in a running backward.

    See NOTE [ Parameter-gradient targets ]."""
    INTO_GRAD = 'added into param.grad'
    RETURNED = 'returned by the node'
    UNUSED = 'not computed'


@contextmanager
def gradients_into(function: nn.Module, params: Sequence[Tensor], accumulators: Sequence[Any],
                   wanted: bool, route_linear: bool = True) -> Iterator[List[Optional[Tensor]]]:
    """Run ``function`` with its trainable parameters replaced by proxies whose gradients are added
    into their targets (NOTE [ Parameter-gradient targets ]); yield what the node returns for each of
    ``params``, the parameters of the node (a RETURNED one's buffer, else None).
    ``accumulators[k]``: the gradient-accumulator node of ``params[k]``; ``wanted=False`` (the node
    got no dL/dx_i): all UNUSED. ``route_linear=False`` (e.g. under autocast) leaves ``F.linear`` to
    ordinary autograd."""
    # 1. The target of each parameter, and the buffer its gradient is added into (None: UNUSED).
    buffers: Dict[int, Optional[Tensor]] = {}
    returned: List[Optional[Tensor]] = []
    for param, accumulator in zip(params, accumulators):
        target = GradTarget.UNUSED
        if wanted and accumulator is not None:
            try:
                if torch._C._will_engine_execute_node(accumulator):
                    target = GradTarget.INTO_GRAD
            except (RuntimeError, AttributeError):  # autograd.grad() captures it (or no query)
                target = GradTarget.RETURNED
        buffer = None
        if target is GradTarget.INTO_GRAD:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            buffer = param.grad
        elif target is GradTarget.RETURNED:
            buffer = torch.zeros_like(param)
        buffers[id(param)] = buffer
        returned.append(buffer if target is GradTarget.RETURNED else None)
    # 2. Proxies whose gradients autograd adds into those buffers (F.linear's: _LinearInto).
    slots = [(m, n, p) for m in function.modules() for n, p in m._parameters.items()
             if p is not None and p.requires_grad]
    proxies: Dict[int, Tensor] = {}
    route = _RouteLinear()
    route.targets = {}
    for _, _, param in slots:
        if id(param) not in proxies:
            proxy = param.detach().requires_grad_(True)
            proxy.grad = buffers.get(id(param))  # added into in place; None: a fresh buffer, dropped
            proxies[id(param)] = proxy
            route.targets[id(proxy)] = proxy.grad
    try:
        for module, name, param in slots:
            module._parameters[name] = proxies[id(param)]
        if route_linear:
            with route:
                yield returned
        else:
            yield returned
    finally:
        for module, name, param in slots:
            module._parameters[name] = param
        for proxy in proxies.values():
            proxy.grad = None
