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

The target of a parameter is decided by the caller (see ``reversible._StepFunction.backward``): the
parameter's own ``.grad`` when the running backward accumulates into it (``loss.backward()``; the stage
node then returns no gradient for it, and the parameter's hooks, e.g. DistributedDataParallel's, still
fire once when autograd reaches it), a fresh buffer that the node returns when the gradient is captured
(``torch.autograd.grad``), or None when nobody asked for it.
"""
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def trainable_slots(function: nn.Module) -> List[Tuple[nn.Module, str, Tensor]]:
    """(module, name, parameter) for every trainable parameter slot inside ``function``."""
    return [(m, n, p) for m in function.modules() for n, p in m._parameters.items()
            if p is not None and p.requires_grad]


class _LinearInto(torch.autograd.Function):
    """``F.linear(x, w, b)`` whose backward adds the weight/bias gradients into given buffers."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], w_into: Optional[Tensor],
                b_into: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.into = (w_into, b_into)
        return F.linear(x, weight, bias)

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

    def __init__(self, targets: Dict[int, Optional[Tensor]]):
        super().__init__()
        self.targets = targets

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is torch._C._nn.linear:
            names = ('input', 'weight', 'bias')
            x, weight, bias = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
            if id(weight) in self.targets and (bias is None or id(bias) in self.targets):
                b_into = self.targets[id(bias)] if bias is not None else None
                return _LinearInto.apply(x, weight, bias, self.targets[id(weight)], b_into)
        return func(*args, **kwargs)


@contextmanager
def gradients_into(function: nn.Module, targets: Dict[int, Optional[Tensor]],
                   route_linear: bool = True) -> Iterator[None]:
    """Run ``function`` with its trainable parameters replaced by proxies whose gradients are added
    into ``targets[id(parameter)]`` (None or missing: the gradient is not needed).
    ``route_linear=False`` (e.g. under autocast) leaves ``F.linear`` to ordinary autograd."""
    slots = trainable_slots(function)
    proxies: Dict[int, Tensor] = {}
    linear_targets: Dict[int, Optional[Tensor]] = {}
    for _, _, param in slots:
        if id(param) in proxies:
            continue
        target = targets.get(id(param))
        proxy = param.detach().requires_grad_(True)
        proxy.grad = target  # autograd adds into it in place; None: a fresh buffer, dropped after
        proxies[id(param)] = proxy
        linear_targets[id(proxy)] = target
    try:
        for module, name, param in slots:
            module._parameters[name] = proxies[id(param)]
        if route_linear:
            with _RouteLinear(linear_targets):
                yield
        else:
            yield
    finally:
        for module, name, param in slots:
            module._parameters[name] = param
        for proxy in proxies.values():
            proxy.grad = None


def accumulates_into_grad(node: Any) -> Optional[bool]:
    """For a parameter's gradient-accumulator node seen from a running backward: True when that
    backward adds into ``.grad`` (``loss.backward()``), None when ``torch.autograd.grad`` captures the
    gradient, False when nobody needs it."""
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (RuntimeError, AttributeError):  # autograd.grad() (or a torch without the query)
        return None
