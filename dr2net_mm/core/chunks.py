"""How a residual branch splits into pieces that the reversible backward recomputes one at a time.

A reversible backward recomputes one branch ``F_i`` and back-propagates through it; the activations of
that recomputation are the largest transient of the backward. A branch that is independent along some
rows of an intermediate tensor may say so by a ``plan(x, *args)`` method returning a :class:`BranchPlan`::

    h = plan.inputs                            # prologue(x): any differentiable function of x
    out[p] = plan.body(h[p], p)  for p in plan.parts     (row ranges of h, independent of each other)
    F(x) = plan.merge(out)                     # linear in out (a reshape, a permutation, drop path)

The engine then holds one part's activations at a time instead of the whole branch's. A plan may
also name ``shared`` tensors that every part reads whole (an attention's keys and values), computed
once from ``h`` as *views* of it::

    s = plan.shared(h)                         # e.g. the K and V columns of the qkv rows h
    out[p] = plan.body(h[p], p, *s)

so that the gradients of all parts for ``s`` add up in place in the matching views of one buffer
for ``h``'s gradient, and ``inputs`` (with the layers before it) is back-propagated once. Contract:

* ``parts`` is a deterministic function of the shapes (the forward and the recomputation must run the
  same parts, so that they compute F bitwise identically);
* ``inputs`` and ``body`` draw no random numbers (a branch with dropout inside them returns no plan);
  ``merge`` may draw (drop path), and is called with the same RNG state in forward and backward;
* ``merge`` is linear in ``out``: its vector-Jacobian product does not depend on ``out``;
  ``merge_vjp`` (optional) computes it without autograd (e.g. for drop path after a reshape: drop
  path of dL/dF, reshaped to the rows of ``out``), replaying the same random draws;
* ``shared`` (optional) returns views of its argument, a function of the shapes alone (it is also
  applied to the gradient buffer of ``h``).

A plan may instead be a :class:`FusedPlan`, for a branch ``F(x) = merge(core(x))`` that writes
its own backward: ``run(g)`` computes ``core(x)`` and, given ``g = dL/d(core)``, back-propagates it
in the same pass (an attention branch head group by head group, adding each group's gradients in
place: :func:`dr2net_mm.branches.fused_attention_plan`)::

    F(x) = plan.merge(plan.run(None))          # the reversible forward: no autograd
    F(x) = plan.merge(plan.run(merge_vjp(dL/dF)))   # the backward: J^T·dL/dF lands in x.grad

Contract: ``run(g)`` computes the same values bitwise as ``run(None)``, draws no random numbers, and
adds each parameter's gradient into the parameter's ``.grad`` when it is not None (inside the
reversible backward the parameters are proxies whose ``.grad`` is the target, NOTE [ Parameter-
gradient targets ] in ``param_grads``; None: not wanted); ``run(None)`` with gradients enabled (the
reference modes) runs the same operations under autograd; ``merge``/``merge_vjp`` as above. With
``scratch_grad`` the plan's ``run(g)`` may overwrite ``g`` once it has read it (e.g. with dL/dx,
row by row): the backward gives it a buffer of its own (``merge_vjp``'s, or a copy of dL/dF).

A branch without ``plan`` (or whose ``plan`` returns None) is recomputed whole. :func:`run_branch`
runs a branch (the forward), :func:`backward_branch` recomputes it as the forward ran it, random draws
included (dropout, drop path: :func:`capture_rng_state` records the generators before the forward, as
``torch.utils.checkpoint`` does; nothing is ever reseeded), and back-propagates through it; each asks
for the plan once.
"""
import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd


# The state of every random generator a branch may draw from, as (generator, state) pairs.
RNGState = List[Tuple[torch.Generator, Tensor]]

# Rows per part are chosen so that one part of h holds about this many elements (4 MiB in float32):
# small enough that a part's activations are a fraction of one stream, large enough for fast GEMMs.
PART_ELEMENTS = 2**20


class BranchPlan(NamedTuple):
    inputs: Tensor
    parts: Sequence[slice]
    body: Callable[..., Tensor]  # body(h[part], part, *shared)
    merge: Callable[[Tensor], Tensor]
    shared: Optional[Callable[[Tensor], Sequence[Tensor]]] = None
    merge_vjp: Optional[Callable[[Tensor], Tensor]] = None


class FusedPlan(NamedTuple):
    run: Callable[[Optional[Tensor]], Tensor]  # run(dL/d(core) or None) -> core(x)
    merge: Callable[[Tensor], Tensor]
    merge_vjp: Callable[[Tensor], Tensor]
    scratch_grad: bool = False  # run(g) may overwrite g


class _GradInto(torch.autograd.Function):
    """``x`` itself (an alias) in forward; in backward its gradient is added into ``into`` (a
    view of a gradient buffer) and nothing flows on. ``anchor``, an empty leaf, only puts the node
    in the graph. So the parts' gradients for a shared tensor add up in place, with no gradient the
    size of the whole buffer per part (as autograd's backward of a view would allocate)."""

    @staticmethod
    def forward(ctx, anchor: Tensor, x: Tensor, into: Tensor) -> Tensor:
        ctx.into = into
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.into.add_(grad)
        return None, None, None


def row_parts(rows: int, row_elements: int, part_elements: int = PART_ELEMENTS,
              align: int = 1) -> List[slice]:
    """Split ``rows`` rows of ``row_elements`` elements into near-equal parts of about
    ``part_elements`` elements; part boundaries fall on multiples of ``align`` (e.g. whole images)."""
    units = max(1, rows // align)
    count = min(units, max(1, math.ceil(rows * row_elements / part_elements)))
    bounds = [round(k * units / count) * align for k in range(count)] + [rows]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def draws_random(module) -> bool:
    """Whether ``module`` draws random numbers as it runs (a dropout with p > 0 in training mode);
    such a module cannot sit in a plan's ``inputs`` or ``body``."""
    return any(isinstance(m, _DropoutNd) and m.p > 0 and m.training for m in module.modules())


def check_branch_output(index: int, function: nn.Module, inp: Tensor, out: Any) -> None:
    """Raise if residual function ``index`` did not return a tensor of its input's shape."""
    if not isinstance(out, Tensor) or out.shape != inp.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f'residual function {index} ({type(function).__name__}) returned {got} for an input of '
            f'shape {tuple(inp.shape)}; a reversible stage needs functions that return a tensor of '
            f'their input\'s shape (the branch output, without the residual add)')


def run_branch(function: nn.Module, inp: Tensor, args: Tuple[Any, ...]) -> Tensor:
    """``function(inp, *args)``, part by part when the function has a plan. Without gradients the
    parts are written into one buffer; with gradients (the reference mode in training) they are
    concatenated, so that every training mode computes F with the same parts. A
    :class:`FusedPlan` runs ``merge(run(None))`` in every mode."""
    plan = function.plan(inp, *args) if hasattr(function, 'plan') else None
    if plan is None:
        return function(inp, *args)
    if isinstance(plan, FusedPlan):
        return plan.merge(plan.run(None))
    shared = () if plan.shared is None else check_views(plan.shared(plan.inputs), plan.inputs)
    if torch.is_grad_enabled():
        return plan.merge(torch.cat([plan.body(plan.inputs[p], p, *shared) for p in plan.parts]))
    out = None
    for part in plan.parts:
        piece = plan.body(plan.inputs[part], part, *shared)
        if out is None:
            out = piece.new_empty((plan.inputs.shape[0], ) + piece.shape[1:])
        out[part] = piece
    return plan.merge(out)


def check_views(shared: Sequence[Tensor], h: Tensor) -> Sequence[Tensor]:
    """``shared`` (what ``plan.shared(h)`` returned), checked to be views of ``h``."""
    shared = tuple(shared)
    base = h.untyped_storage().data_ptr()
    if not all(isinstance(s, Tensor) and s.untyped_storage().data_ptr() == base for s in shared):
        raise ValueError('a BranchPlan\'s shared(h) must return views of h (slices, reshapes, '
                         'permutations), so that the parts\' gradients for them add up in the '
                         'gradient buffer of h; compute anything else in inputs or body')
    return shared


def same_layout(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same shape, dtype and strides (one may stand for the other)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def capture_rng_state(device: torch.device) -> RNGState:
    """The CPU generator's state, plus the accelerator generator's for tensors on ``device``."""
    generators = [torch.default_generator]
    if device.type == 'cuda':
        torch.cuda.init()  # creates the default generators
        index = device.index if device.index is not None else torch.cuda.current_device()
        generators.append(torch.cuda.default_generators[index])
    return [(generator, generator.get_state()) for generator in generators]


def backward_branch(function: nn.Module, inp: Tensor, args: Tuple[Any, ...], grad: Optional[Tensor],
                    rng: RNGState) -> Tensor:
    """Recompute ``F = function(inp, *args)`` as the forward computed it and back-propagate ``grad``
    (dL/dF, or None) through it; return F's value, detached. ``J^T grad`` lands in ``inp.grad`` when
    ``inp`` requires grad (and in ``.grad`` of any other leaf that F uses).

    ``rng``: the generator states the forward ran F from (:func:`capture_rng_state`; empty: none to
    replay). Each call that may draw starts from them: the whole branch, or, by its plan, only
    ``merge``, which runs twice (its vector-Jacobian product first, its value last). The generators'
    own states are put back at the end, so the training run's random stream continues untouched.

    By its plan, the body runs one part at a time: a part's activations are freed by its backward
    before the next part runs, and ``plan.inputs`` is back-propagated once, at the end. With
    ``plan.shared``, the gradient buffer of ``plan.inputs`` starts at zero and every part adds into
    it, its rows and the shared views alike (:class:`_GradInto`).
    """
    outer = [(generator, generator.get_state()) for generator, _ in rng]
    try:
        plan = function.plan(inp, *args) if hasattr(function, 'plan') else None
        if plan is None:
            for generator, state in rng:
                generator.set_state(state)
            f = function(inp, *args)
            if grad is not None and f.requires_grad:
                torch.autograd.backward(f, grad.to(f.dtype))
            return f.detach()
        if isinstance(plan, FusedPlan):
            g_out = None
            if grad is not None:
                for generator, state in rng:
                    generator.set_state(state)
                with torch.no_grad():
                    g_out = plan.merge_vjp(grad)
                if plan.scratch_grad and _shares_memory(g_out, grad):
                    g_out = g_out.clone()
            out = plan.run(g_out)
            for generator, state in rng:
                generator.set_state(state)
            with torch.no_grad():
                return plan.merge(out)
        h = plan.inputs
        wants_h = grad is not None and h.requires_grad
        shared: Sequence[Tensor] = ()
        anchor = out = g_out = None
        if grad is not None and plan.merge_vjp is not None:
            for generator, state in rng:
                generator.set_state(state)
            with torch.no_grad():
                g_out = plan.merge_vjp(grad)
        if plan.shared is None:  # every row of h belongs to exactly one part: no zero fill
            # a part's rows of dL/d(out) are read before its rows of dL/dh are written: one buffer
            # serves both when dL/d(out) is a buffer of its own of h's layout
            h_grad = (g_out if g_out is not None and same_layout(g_out, h)
                      and not _shares_memory(g_out, grad) else torch.empty_like(h)) \
                if wants_h else None
        else:
            h_grad = torch.zeros_like(h) if wants_h else None
            shared = check_views(plan.shared(h.detach()), h)
            if h_grad is not None:
                anchor = torch.empty(0, device=h.device, requires_grad=True)
                shared = [_GradInto.apply(anchor, value, into)
                          for value, into in zip(shared, plan.shared(h_grad))]
        for part in plan.parts:
            if anchor is not None:
                piece_in = _GradInto.apply(anchor, h[part].detach(), h_grad[part])
            else:
                piece_in = h[part].detach().requires_grad_(h_grad is not None)
            piece = plan.body(piece_in, part, *shared)
            if out is None:
                out = piece.new_empty((h.shape[0], ) + piece.shape[1:])
                if grad is not None and g_out is None:  # merge is linear: its VJP needs no values
                    for generator, state in rng:
                        generator.set_state(state)
                    probe = torch.empty_like(out).requires_grad_()  # values unused (linear)
                    merged = plan.merge(probe)
                    g_out, = torch.autograd.grad(merged, probe, grad.to(merged.dtype))
                    del probe, merged
            out[part] = piece.detach()
            if g_out is not None and piece.requires_grad:
                torch.autograd.backward(piece, g_out[part].reshape(piece.shape).to(piece.dtype))
                if h_grad is not None and anchor is None:
                    h_grad[part] = piece_in.grad
            del piece, piece_in
        del g_out, shared
        if h_grad is not None:
            torch.autograd.backward(h, h_grad)
        for generator, state in rng:
            generator.set_state(state)
        with torch.no_grad():
            return plan.merge(out)
    finally:
        for generator, state in outer:
            generator.set_state(state)
