"""Reversible dual-residual stage: the Dr²Net engine (Zhao et al., CVPR 2024, Eq. 1 and 2).

A pretrained residual network computes ``x_i = F_i(x_{i-1}) + x_{i-1}``. Dr²Net adds a second stream and
two coefficients. For i = 1..n (Eq. 1)::

    x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1}
    y_i = β·x_{i-1}
    (x_0, y_0) = (x_0, β·x_0)                      output: x_n

With α=1, β=0 this is the pretrained network. With β>0 each step is invertible (Eq. 2)::

    x_{i-1} = y_i / β
    y_{i-1} = x_i − F_i(x_{i-1}) − α·x_{i-1}

so the backward pass rebuilds every activation from ``(x_n, y_n)`` and the forward keeps nothing else.

Why ``y_0 = β·x_0``: the paper writes ``y_0 = x_0``, which at α=1, β=0 would add an extra ``x_0`` to the
first module's output, so the stage would not equal the pretrained network. ``y_0 = β·x_0`` is what
``y_i = β·x_{i-1}`` gives for a virtual module before the first; at β=1 both choices agree.

Precision. In floating point the inverse amplifies rounding error by about (‖J‖ + α)/β per module
(~11x at (1, 0.1), ~1.4x at (0.3, 0.7)). The default ``stream_dtype='exact'`` removes the rounding
from the inverse altogether: fixed-point streams, F_i's output and α·x rounded onto their grid, and
an exactly invertible ``y = β·x`` whose discarded bits go to a per-element buffer (``streams``), so
Eq. 2 rebuilds the forward's streams bit for bit at any (α, β), each F_i still running in the model
dtype. Float64/float32 streams remain options, with ``segment_size`` (a long stage cut into segments
of k modules whose input streams are kept, bounding the amplification, at one kept stream pair per
segment). A free reconstruction-error monitor checks every backward (see ``ReversibleSequence``):
exactly 0 for exact streams.

Memory of the backward. A step's backward holds, besides what the forward kept: one stream pair,
rebuilt in place (Eq. 2 overwrites ``y_i`` with ``x_{i-1}`` and ``x_i`` with ``y_{i-1}``); the
gradients ``dL/dx_i, dL/dy_i`` in the model dtype (the gradient recursion runs in place in the model
dtype, as ordinary autograd's does); and one branch's recomputation, part by part when the branch
has a plan (``chunks``), with its parameter gradients added straight into ``.grad``
(``param_grads``).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import weakref

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..checks import check_coefficients, check_segment_size, parse_stream_dtype
from .autocast import autocast_state
from .chunks import backward_by_parts, run_branch
from .fixed_point import nearest_beta
from .param_grads import accumulates_into_grad, gradients_into
from .rng import capture_rng_state, replay_rng_state
from .streams import EXACT, branch_input, dual_residual_step, stream_arithmetic

def _check_shape(index: int, function: nn.Module, inp: Tensor, out: Tensor) -> None:
    if not isinstance(out, Tensor) or out.shape != inp.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f'residual function {index} ({type(function).__name__}) returned {got} for an input of '
            f'shape {tuple(inp.shape)}; a reversible stage needs functions that return a tensor of '
            f'their input\'s shape (the branch output, without the residual add)')


def _with_value(tensor: Tensor, value: Tensor) -> Tensor:
    """``value`` with ``tensor``'s gradient path: ``value + (tensor − tensor.detach())``."""
    if not tensor.requires_grad:
        return value
    return value + (tensor - tensor.detach())


def _relative_norm(error: Tensor, reference: Tensor) -> Tensor:
    """‖error‖ / ‖reference‖ as a 0-dim float64 tensor (no host sync)."""
    ref = torch.linalg.vector_norm(reference, dtype=torch.float64)
    return torch.linalg.vector_norm(error, dtype=torch.float64) / ref.clamp_min(
        torch.finfo(torch.float64).tiny)


class _Run:
    """State of one reversible forward call, shared by its per-function autograd nodes.

    The autograd graph links the nodes by empty tensors; everything that is large travels here, on
    the side, and is handed from node i+1 to node i during backward:

    * the streams ``(x_i, y_i)`` in the stream dtype, rebuilt in place by Eq. 2 (one pair alive);
    * the gradients ``(dL/dx_i, dL/dy_i)`` in the model dtype (``dL/dy_i = dL/dx_{i+1}``).

    Kept segment-end streams are saved by their nodes (``save_for_backward``); the run holds weak
    references to those nodes only for the rare backward that starts below a node that got no
    gradient (see :meth:`streams_after`)."""

    def __init__(self, stage: 'ReversibleSequence', args: Tuple[Any, ...], model_dtype: torch.dtype,
                 device: torch.device, out_positions: Tuple[int, ...],
                 params_per_function: List[List[Tensor]]):
        self.stage = stage
        self.functions = list(stage.functions)
        self.params_per_function = params_per_function
        self.args = args
        self.alpha, self.beta = stage.alpha, stage.beta
        self.model_dtype = model_dtype
        self.out_positions = out_positions
        self.arith = stream_arithmetic(stage.stream_dtype, self.alpha, self.beta, model_dtype)
        self.finite = True  # False when the forward met a non-finite value (exact streams)
        self.boundaries = stage.segment_boundaries()  # positions whose streams are kept
        self.replay_rng = stage.preserve_rng_state and stage.training
        self.rng_states: Dict[int, Any] = {}
        self.device = device
        self.autocast = autocast_state(device)
        self.streams: Optional[Tuple[int, Tensor, Tensor]] = None  # forward: current; backward: handover
        self.grads: Optional[Tuple[int, Optional[Tensor], Optional[Tensor]]] = None  # (i, gx_i, gy_i)
        self.kept_nodes: Dict[int, Any] = {}  # position -> weakref to the node keeping its streams
        # position -> (tensors packing x, has hi, tensors packing the segment's β buffer)
        self.layout: Dict[int, Tuple[int, bool, int]] = {}
        self.errors: Dict[int, Tensor] = {}  # segment start position -> reconstruction error

    def record_error(self, segment_start: int, error: Tensor) -> None:
        if not self.finite:
            error = torch.full((), float('nan'), dtype=torch.float64, device=error.device)
        self.errors[segment_start] = error.detach()
        self.stage._record_errors(torch.stack([self.errors[k] for k in sorted(self.errors)]))

    def rebuild(self, i: int, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        """Eq. 2 in place, without gradients: (x_i, y_i) -> (x_{i-1}, y_{i-1}) in the same buffers."""
        x_prev = self.arith.undo_beta(y)
        rng = self.rng_states.get(i) if self.replay_rng else None
        with torch.no_grad(), replay_rng_state(rng), torch.autocast(**self.autocast):
            f = run_branch(self.functions[i - 1], self.arith.branch_input(x_prev), self.args)
        return x_prev, self.arith.undo_step(x, f, x_prev)

    def kept_streams(self, position: int, saved: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        """The kept (x, y) at ``position`` from a node's saved tensors [x packed..., y, hi?, buffer
        packed...], as new tensors (the backward rebuilds them in place)."""
        n_packed, has_hi, _ = self.layout[position]
        hi = saved[n_packed + 1] if has_hi else None
        x = self.arith.unpack(saved[:n_packed], hi)
        if any(x.data_ptr() == t.data_ptr() for t in saved):
            x = x.clone()
        return x, saved[n_packed].clone()

    def load_segment(self, position: int, saved: Tuple[Tensor, ...], like: Tensor) -> None:
        """Make the segment ending at ``position`` current (its β buffer, for exact streams)."""
        n_packed, has_hi, n_buffer = self.layout[position]
        first = n_packed + 1 + int(has_hi)
        self.arith.load_segment(position, saved[first:first + n_buffer], like)

    def distance(self, rebuilt: Tensor, kept: Tensor) -> Tensor:
        """‖rebuilt − kept‖ / ‖kept‖ in float64 (``rebuilt`` is overwritten)."""
        return _relative_norm(self.arith.as_float64(rebuilt.sub_(kept)), self.arith.as_float64(kept))

    def segment_error(self, error: Tensor) -> Tensor:
        """A segment's monitor value: ``error``, or 1 if its β buffer did not return to 0."""
        undone = self.arith.segment_undone()
        return error if undone is None else torch.maximum(error, (~undone).to(error.dtype))

    def streams_after(self, i: int) -> Tuple[Tensor, Tensor]:
        """(x_i, y_i) for node i whose output streams are not kept: handed over by node i+1, or, if
        node i+1 got no gradient, rebuilt from the nearest kept streams above."""
        if self.streams is not None and self.streams[0] == i:
            _, x, y = self.streams
            self.streams = None
            return x, y
        above = min(p for p in self.boundaries if p > i)
        node = self.kept_nodes[above]()
        if node is None:
            raise RuntimeError(
                f'reversible stage: the gradient reached function {i} but not function {i + 1}, and '
                f'the graph keeping the streams at position {above} is gone; keep the stage\'s '
                'outputs alive until backward')
        saved = tuple(t.detach() for t in node.saved_tensors)
        x, y = self.kept_streams(above, saved)
        self.load_segment(above, saved, x)
        for j in range(above, i, -1):
            x, y = self.rebuild(j, x, y)
        return x, y

    def grads_after(self, i: int, g_out: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(dL/dx_i, dL/dy_i) in the model dtype: handed over by node i+1, plus the gradient of the
        stage output at position i. A tensor received from outside is never modified in place."""
        gx = gy = None
        if self.grads is not None and self.grads[0] == i:
            _, gx, gy = self.grads
        self.grads = None
        if g_out is not None:
            g_out = g_out.to(self.model_dtype)
            gx = g_out if gx is None else gx.add_(g_out)
        return gx, gy

    def backward_through(self, i: int, x_prev: Tensor, gx: Optional[Tensor], need_x: bool,
                         targets: Dict[int, Optional[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
        """Recompute F_i(x_{i-1}) as in the forward (same RNG draws, same autocast, same parts) and
        back-propagate ``gx`` through it: parameter gradients go to ``targets`` (see ``param_grads``).
        Returns F_i's value (model dtype) and ``J_i^T gx`` (None when ``need_x`` is False)."""
        function = self.functions[i - 1]
        rng = self.rng_states.get(i) if self.replay_rng else None
        autocast = torch.autocast(**self.autocast)
        with torch.set_grad_enabled(gx is not None), replay_rng_state(rng), autocast, \
                gradients_into(function, targets, route_linear=not self.autocast['enabled']):
            inp = self.arith.branch_input(x_prev).detach().requires_grad_(need_x)
            plan = function.plan(inp, *self.args) if hasattr(function, 'plan') else None
            if plan is None:
                f = function(inp, *self.args)
                if gx is not None and f.requires_grad:
                    torch.autograd.backward(f, gx.to(f.dtype))
                f = f.detach()
            else:
                f = backward_by_parts(plan, gx, rng)
        return f, inp.grad if need_x else None


class _StepFunction(torch.autograd.Function):
    """One function of the stage as one autograd node: (x_{i-1}, y_{i-1}) -> (x_i, y_i) by Eq. 1.

    Inputs are ``(run, i, link, *parameters of F_i)``: ``link`` is the stage input x_0 for i = 1 and
    the previous node's empty link tensor otherwise, so the graph orders the nodes while the streams
    and their gradients travel through the run (see :class:`_Run`). The parameters are inputs so that
    autograd (and ``DistributedDataParallel``'s search for unused parameters) sees them reached; their
    gradients are added into ``.grad`` during F_i's backward (one tensor at a time) and the node
    returns none, or returns them when ``torch.autograd.grad`` asked for them. Outputs: the link, and
    ``x_i`` in the model dtype when i is an output position. A node keeps nothing for backward unless
    its position ends a segment."""

    @staticmethod
    def forward(ctx, run: _Run, i: int, link: Tensor, *params: Tensor):
        arith = run.arith
        if i == 1:
            x, y = arith.start(link)
        else:
            _, x, y = run.streams
        if i == 1 or i - 1 in run.boundaries:
            arith.begin_segment(x)
        if run.replay_rng:
            run.rng_states[i] = capture_rng_state(run.device)
        inp = arith.branch_input(x)
        f = run_branch(run.functions[i - 1], inp, run.args)
        _check_shape(i, run.functions[i - 1], inp, f)
        del inp
        x_new = arith.next_x(f, x, y)
        del f, y
        y_new = arith.next_y(x)
        del x
        run.streams = (i, x_new, y_new)
        ctx.run, ctx.i = run, i
        ctx.set_materialize_grads(False)
        outputs = [torch.empty(0, dtype=run.model_dtype, device=run.device)]
        hi = arith.output(x_new) if i in run.out_positions else None
        if hi is not None:
            outputs.append(hi)
        to_save: List[Tensor] = []
        if i in run.boundaries:
            packed, buffer = arith.pack(x_new, hi), arith.end_segment(i)
            run.layout[i] = (len(packed), hi is not None, len(buffer))
            to_save = [*packed, y_new] + ([hi] if hi is not None else []) + list(buffer)
            run.kept_nodes[i] = weakref.ref(ctx)
        if i == 1:  # ‖x_0‖ normalises the first segment's monitor even if the rebuilt x_0' is garbage
            to_save.append(torch.linalg.vector_norm(link))
        ctx.save_for_backward(*to_save)
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, _link_grad: Optional[Tensor], g_out: Optional[Tensor] = None):
        run: _Run = ctx.run
        i = ctx.i
        alpha, beta = run.alpha, run.beta
        saved = ctx.saved_tensors
        if i in run.boundaries:
            x, y = run.kept_streams(i, saved)
            if run.streams is not None and run.streams[0] == i:  # rebuilt by the next segment
                _, x_rebuilt, y_rebuilt = run.streams
                run.streams = None
                run.record_error(i, run.segment_error(
                    torch.maximum(run.distance(x_rebuilt, x), run.distance(y_rebuilt, y))))
                del x_rebuilt, y_rebuilt
            run.load_segment(i, saved, x)
        else:
            x, y = run.streams_after(i)
        gx, gy = run.grads_after(i, g_out)
        need_x = ctx.needs_input_grad[2]
        # Parameter gradients: straight into .grad where the running backward accumulates there.
        targets: Dict[int, Optional[Tensor]] = {}
        returned: List[Optional[Tensor]] = []
        for k, param in enumerate(run.params_per_function[i - 1]):
            mode = accumulates_into_grad(ctx.next_functions[1 + k][0]) if gx is not None else False
            target = None
            if mode:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                target = param.grad
            elif mode is None:
                target = torch.zeros_like(param)
            targets[id(param)] = target
            returned.append(target if mode is None else None)
        x_prev = run.arith.undo_beta(y)  # Eq. 2 (float streams: in place, y's buffer holds x_{i-1})
        del y
        f, jtg = run.backward_through(i, x_prev, gx, need_x and gx is not None, targets)
        y_prev = run.arith.undo_step(x, f, x_prev)  # in place: x's buffer now holds y_{i-1}
        del x, f
        # x_i = F_i(x_{i-1}) + α x_{i-1} + y_{i-1},  y_i = β x_{i-1}:
        # dL/dx_{i-1} = J_i^T dL/dx_i + α dL/dx_i + β dL/dy_i,   dL/dy_{i-1} = dL/dx_i
        gx_prev = None
        if need_x:
            if gx is not None:
                gx_prev = jtg.add_(gx, alpha=alpha) if jtg is not None else alpha * gx
            if gy is not None:
                gx_prev = beta * gy if gx_prev is None else gx_prev.add_(gy, alpha=beta)
        del gy, jtg
        if i == 1:  # the rebuilt pair must satisfy y_0 = β·x_0; y_0 = β·x_0 also passes dL/dy_0
            x0_norm = saved[-1].to(torch.float64)
            residual = run.arith.as_float64(run.arith.initial_y_residual(y_prev, x_prev))
            run.record_error(0, run.segment_error(
                torch.linalg.vector_norm(residual)
                / (beta * x0_norm).clamp_min(torch.finfo(torch.float64).tiny)))
            if need_x and gx is not None:
                gx_prev = beta * gx if gx_prev is None else gx_prev.add_(gx, alpha=beta)
            link_grad = gx_prev
        else:
            run.streams = (i - 1, x_prev, y_prev)
            run.grads = (i - 1, gx_prev, gx)
            link_grad = torch.zeros(0, dtype=run.model_dtype, device=run.device) if need_x else None
        return (None, None, link_grad, *returned)


class ReversibleSequence(nn.Module):
    """A reversible dual-residual stage over residual functions ``F_1..F_n``.

    Forward (Eq. 1): ``x_i = F_i(x_{i-1}, *args) + α·x_{i-1} + y_{i-1}``, ``y_i = β·x_{i-1}``,
    ``(x_0, y_0) = (x_0, β·x_0)``; returns ``x_n`` (or the streams at chosen positions).

    Args:
        functions: the residual branches, each mapping a tensor to a tensor of the same shape *without*
            the residual add (e.g. ``drop_path(attn(norm1(x)))``). Extra positional arguments given to
            :meth:`forward` are passed to every function as constants (no gradient flows to them).
        alpha, beta: the coefficients, in [0, 1]; β > 0 when ``reversible``.
        reversible: in training with gradients, keep only segment-end streams and rebuild activations
            in backward (Eq. 2). ``False``: ordinary autograd through Eq. 1 (the exact reference).
            Under ``torch.no_grad()`` or in eval mode the forward is plain either way.
        stream_dtype: the streams and the Eq. 1/2 arithmetic in training: ``'exact'`` (default:
            fixed point with an exact β buffer, bit-exact rebuilds; |x| < 2^21, else
            ``OverflowError``), ``torch.float64`` or ``torch.float32``. Each F_i still runs in the
            dtype of the input. Without gradients the streams use the input dtype (the plain, fast
            path). β is used as the nearest fraction n/d with d <= 2^10 in every mode (0.1, 0.7,
            0.01 exactly; in general within 5e-4).
        segment_size: keep the streams every ``segment_size`` functions (None: only at the end). For
            float streams error amplification is bounded by one segment; memory grows by one stream
            pair per segment. Exact streams need none.
        max_error: reconstruction error above which :meth:`reconstruction_ok` is False; None (the
            default) flags only non-finite streams: near the start point (1, 0.1) one-segment stages
            rebuild with errors of order 1 and the paper trains through that regime, so a default
            threshold would stall the start of every finetuning; set one to skip imprecise steps.
        preserve_rng_state: replay dropout/drop-path masks in the recomputation (as in
            ``torch.utils.checkpoint``); costs one RNG-state copy per function and step in training.
        register_functions: True: the stage owns ``functions`` (they are its submodules). False: they
            are registered elsewhere (e.g. wrappers around a pretrained backbone's blocks, which keep
            the backbone's state-dict layout), so the stage adds no parameters, buffers or state-dict
            keys; their train/eval mode and device follow their owners.

    Reconstruction-error monitor: after each reversible backward, per segment, the relative distance of
    the rebuilt segment-input streams from their true value: for the first segment
    ``‖y_0' − β·x_0'‖ / (β·‖x_0‖)`` (the rebuilt pair must satisfy ``y_0 = β·x_0``; ``‖x_0‖`` is kept
    from the forward, one scalar), for later segments ``max(‖x_b' − x_b‖/‖x_b‖, ‖y_b' − y_b‖/‖y_b‖)``
    against the kept streams; with exact streams also 1 if a segment's β buffer did not return to 0.
    Exact streams read exactly 0. It costs a few reductions per segment and no host sync. Read it
    with :attr:`reconstruction_errors` (one tensor, no host sync) or :meth:`reconstruction_error`
    (a float, the worst segment).

    Shapes: ``x`` is any tensor (e.g. ``(B, L, C)`` tokens); every output has the shape of ``x``.
    """

    def __init__(self, functions: Sequence[nn.Module], alpha: float = 1.0, beta: float = 0.1,
                 reversible: bool = True, stream_dtype: Union[torch.dtype, str] = EXACT,
                 segment_size: Optional[int] = None, max_error: Optional[float] = None,
                 preserve_rng_state: bool = True, register_functions: bool = True):
        super().__init__()
        functions = list(functions)
        if not functions or not all(isinstance(f, nn.Module) for f in functions):
            raise TypeError('functions must be a non-empty sequence of nn.Module residual branches, '
                            f'got {[type(f).__name__ for f in functions]}')
        # A tuple is a plain attribute for nn.Module: nothing registered twice.
        self.functions = nn.ModuleList(functions) if register_functions else tuple(functions)
        stream_dtype = parse_stream_dtype(stream_dtype)
        segment_size = check_segment_size(segment_size)
        if max_error is not None and not (max_error > 0):
            raise ValueError(f'max_error={max_error!r} must be None or a positive number')
        self.alpha, self.beta = nearest_beta(check_coefficients(alpha, beta, reversible))
        self._reversible = bool(reversible)
        self.stream_dtype = stream_dtype
        self.segment_size = segment_size
        self.max_error = None if max_error is None else float(max_error)
        self.preserve_rng_state = preserve_rng_state
        self._errors: Optional[Tensor] = None

    @property
    def reversible(self) -> bool:
        return self._reversible

    @reversible.setter
    def reversible(self, value: bool) -> None:
        check_coefficients(self.alpha, self.beta, bool(value))
        self._reversible = bool(value)

    def set_coefficients(self, alpha: float, beta: float) -> None:
        """Set (α, β); validated as in the constructor."""
        self.alpha, self.beta = nearest_beta(check_coefficients(alpha, beta, self._reversible))

    def segment_boundaries(self) -> Tuple[int, ...]:
        """Positions i whose streams (x_i, y_i) the reversible forward keeps (always includes n)."""
        n = len(self.functions)
        k = self.segment_size or n
        return tuple(range(k, n, k)) + (n, )

    # ----------------------------------------------------------------- monitor
    def _record_errors(self, errors: Tensor) -> None:
        self._errors = errors.detach()

    @property
    def reconstruction_errors(self) -> Optional[Tensor]:
        """Per-segment reconstruction errors of the latest reversible backward (float64), or None."""
        return self._errors

    def reconstruction_error(self) -> Optional[float]:
        """The worst segment's reconstruction error of the latest reversible backward, or None."""
        if self._errors is None:
            return None
        worst = self._errors.max()
        return float('nan') if not torch.isfinite(self._errors).all() else worst.item()

    def reconstruction_ok(self) -> bool:
        """False when the latest reversible backward rebuilt non-finite streams or exceeded
        ``max_error`` (the caller should skip that optimizer step)."""
        error = self.reconstruction_error()
        if error is None:
            return True
        return error == error and (self.max_error is None or error <= self.max_error)

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args: Any,
                out_positions: Optional[Sequence[int]] = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Run Eq. 1. ``out_positions``: positions k in 1..n whose stream ``x_k`` (after F_k) is
        returned, in increasing order, as a tuple; None returns ``x_n`` alone. Extra outputs cost no
        extra kept streams: the backward adds their gradients as it walks past them."""
        n = len(self.functions)
        positions = (n, ) if out_positions is None else tuple(int(p) for p in out_positions)
        if not positions or list(positions) != sorted(set(positions)) or positions[0] < 1 \
                or positions[-1] > n:
            raise ValueError(f'out_positions={out_positions!r} must be increasing positions in 1..{n}')
        if not x.is_floating_point():
            raise TypeError(f'the stage input must be a floating-point tensor, got {x.dtype}')
        params = [[p for p in f.parameters() if p.requires_grad] for f in self.functions]
        tracks_grad = torch.is_grad_enabled() and (x.requires_grad or any(params))
        if self._reversible and self.training and tracks_grad:
            for a in args:
                if isinstance(a, Tensor) and a.requires_grad:
                    raise ValueError('extra arguments of a reversible stage are constants; got a '
                                     'tensor that requires grad (detach it or use reversible=False)')
            outputs = self._reversible_forward(x, args, positions, params)
        else:
            stream_dtype = self.stream_dtype if tracks_grad else x.dtype
            outputs = self._plain_forward(x, args, positions, stream_dtype)
        return outputs[0] if out_positions is None else tuple(outputs)

    def _reversible_forward(self, x0: Tensor, args: Tuple[Any, ...], positions: Tuple[int, ...],
                            params: List[List[Tensor]]) -> List[Tensor]:
        """Eq. 1 as a chain of per-function autograd nodes that keep only segment-end streams."""
        run = _Run(self, args, x0.dtype, x0.device, positions, params)
        link, outputs = x0, {}
        for i in range(1, len(self.functions) + 1):
            result = _StepFunction.apply(run, i, link, *params[i - 1])
            link = result[0]
            if len(result) == 2:
                outputs[i] = result[1]
        run.streams = None  # the forward's last stream pair: kept only as the nodes saved it
        run.finite = run.arith.finish_forward()
        if not run.finite:  # make the step non-finite, so the loss shows it and the step is skipped
            return [outputs[p] + float('nan') for p in positions]
        return [outputs[p] for p in positions]

    def _plain_forward(self, x0: Tensor, args: Tuple[Any, ...], positions: Tuple[int, ...],
                       stream_dtype: Union[torch.dtype, str]) -> List[Tensor]:
        """Eq. 1 with ordinary autograd (or none, under no_grad). In training with gradients the
        branches run by their plans, as in the reversible mode (the same F in both).

        Exact streams cannot carry autograd (integers): the gradient runs through float64 streams
        while the values come from exact streams run alongside, without gradient (each F input and
        output is ``exact value + (float64 value − its detached self)``). So the reference computes
        bitwise the reversible mode's values and ordinary autograd's gradients of them."""
        alpha, beta = self.alpha, self.beta
        by_parts = self.training and torch.is_grad_enabled()
        exact = None
        if stream_dtype == EXACT:
            exact, stream_dtype = stream_arithmetic(EXACT, alpha, beta, x0.dtype), torch.float64
            with torch.no_grad():
                ex, ey = exact.start(x0)
        x = x0.to(stream_dtype)
        y = beta * x if beta != 0.0 else None
        boundaries = self.segment_boundaries()
        outputs = []
        for i, function in enumerate(self.functions, 1):
            inp = branch_input(x, x0.dtype)
            if exact is not None:
                if i == 1 or i - 1 in boundaries:
                    exact.begin_segment(ex)
                inp = _with_value(inp, exact.branch_input(ex))
            f = run_branch(function, inp, args) if by_parts else function(inp, *args)
            _check_shape(i, function, inp, f)
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

    def extra_repr(self) -> str:
        return (f'n={len(self.functions)}, alpha={self.alpha}, beta={self.beta}, '
                f'reversible={self._reversible}, stream_dtype={self.stream_dtype}, '
                f'segment_size={self.segment_size}')


def reversible_stages(model: nn.Module) -> List[ReversibleSequence]:
    """Every :class:`ReversibleSequence` inside ``model``."""
    return [m for m in model.modules() if isinstance(m, ReversibleSequence)]


def set_reversible(model: nn.Module, reversible: bool) -> None:
    """Switch every stage of ``model`` between reversible and reference (ordinary autograd) mode."""
    for stage in reversible_stages(model):
        stage.reversible = reversible


def set_stream_dtype(model: nn.Module, stream_dtype: torch.dtype) -> None:
    """Set the stream dtype of every stage of ``model``."""
    stream_dtype = parse_stream_dtype(stream_dtype)
    for stage in reversible_stages(model):
        stage.stream_dtype = stream_dtype
