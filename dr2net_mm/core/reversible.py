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
(~11x at (1, 0.1)). The default ``stream_dtype='exact'`` (fixed-point streams with an exactly
invertible ``y = β·x``, ``exact_streams``) rebuilds the forward's streams bit for bit at any (α, β),
each F_i still running in the model dtype. Float64/float32 streams remain options, with
``segment_size`` (segments of k modules whose input streams are kept) bounding the amplification.
A free reconstruction-error monitor checks every backward: exactly 0 for exact streams.

Memory of the backward. A step's backward holds, besides what the forward kept: one stream pair,
rebuilt in place (Eq. 2 overwrites ``y_i`` with ``x_{i-1}`` and ``x_i`` with ``y_{i-1}``); the
gradients ``dL/dx_i, dL/dy_i`` in the model dtype (the gradient recursion runs in place in the model
dtype, as ordinary autograd's does); and one branch's recomputation, part by part when the branch
has a plan (``chunks``), with its parameter gradients added straight into ``.grad``
(``param_grads``).

Where things are: this module holds the stage and its autograd node (NOTE [ One backward step ]);
``stage_call`` what the nodes of one forward call share and how they hand the streams over;
``streams`` the stream arithmetic; ``chunks`` how a branch runs and is recomputed; ``param_grads``
where parameter gradients go; ``monitor`` the reconstruction-error monitor; ``plain_forward`` the
reference (ordinary autograd) forward.
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..checks import check_coefficients, check_segment_size, parse_stream_dtype
from .chunks import backward_branch, capture_rng_state, check_branch_output, run_branch
from .exact_streams import RecordedOverflow, StreamOverflow
from .fixed_point import nearest_beta
from .fsdp_check import check_gathered
from .param_grads import gradients_into
from .plain_forward import plain_forward
from .stage_call import Handover, KeptStreams, StageCall
from .streams import EXACT, stream_arithmetic


class ReversibleSequence(nn.Module):
    """A reversible dual-residual stage over residual functions ``F_1..F_n``.

    Forward (Eq. 1): ``x_i = F_i(x_{i-1}, *args) + α·x_{i-1} + y_{i-1}``, ``y_i = β·x_{i-1}``,
    ``(x_0, y_0) = (x_0, β·x_0)``; returns ``x_n`` (or the streams at chosen positions).

    Args:
        functions: the residual branches, each mapping a tensor to a tensor of the same shape *without*
            the residual add (e.g. ``drop_path(attn(norm1(x)))``). Extra positional arguments given to
            :meth:`forward` are passed to every function. A tensor among them that requires grad is a
            *side input* shared by all functions (e.g. DETR's ``query_pos``, a decoder's memory): its
            gradient, summed over the functions, flows back as through ordinary autograd. Other
            arguments are constants.
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
        record_overflow: False (default): a forward whose exact streams leave |x| < 2^21 raises
            ``OverflowError`` (a ``StreamOverflow``; after the stage's first clean forward, at the
            first backward node or the next forward: NOTE [ Deferred range checks ] in
            ``exact_streams``). True: it returns zeros in place of its outputs (finite for
            whatever the model computes next) and keeps the error in :attr:`overflow`, for a caller
            that skips the whole step (``ReversibleGuardHook`` sets it, so that all DDP ranks
            finish the forward and agree to skip the batch together).

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
    overflow = RecordedOverflow()  # the recorded StreamOverflow (record_overflow), or None

    def __init__(self, functions: Sequence[nn.Module], alpha: float = 1.0, beta: float = 0.1,
                 reversible: bool = True, stream_dtype: Union[torch.dtype, str] = EXACT,
                 segment_size: Optional[int] = None, max_error: Optional[float] = None,
                 preserve_rng_state: bool = True, register_functions: bool = True,
                 record_overflow: bool = False):
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
        self.record_overflow = bool(record_overflow)
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
        n, k = len(self.functions), self.segment_size or len(self.functions)
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
        return float('nan') if not torch.isfinite(self._errors).all() else self._errors.max().item()

    def reconstruction_ok(self) -> bool:
        """False when the latest reversible backward rebuilt non-finite streams or exceeded
        ``max_error`` (the caller should skip that optimizer step)."""
        error, limit = self.reconstruction_error(), self.max_error
        return error is None or (error == error and (limit is None or error <= limit))

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
        check_gathered(self)  # an FSDP2 unit inside the stage cannot work (see core.fsdp)
        sides = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        tracks_grad = torch.is_grad_enabled() and (x.requires_grad or any(params) or bool(sides))
        try:
            if self._reversible and self.training and tracks_grad:
                outputs = self._reversible_forward(x, args, positions, params)
            else:
                stream_dtype = self.stream_dtype if tracks_grad else x.dtype
                outputs = plain_forward(self, x, args, positions, stream_dtype)
        except StreamOverflow as error:  # raised after the whole forward ran (finish_forward)
            if not self.record_overflow:
                raise
            self.overflow = error
            outputs = [torch.zeros_like(x) for _ in positions]
        return outputs[0] if out_positions is None else tuple(outputs)

    # torch.compile runs the chain and its backward eagerly (a graph break): its nodes keep Python
    # state across calls, capture RNG states and sync with the host, which dynamo cannot trace.
    @torch.compiler.disable
    def _reversible_forward(self, x0: Tensor, args: Tuple[Any, ...], positions: Tuple[int, ...],
                            params: List[List[Tensor]]) -> List[Tensor]:
        """Eq. 1 as a chain of per-function autograd nodes that keep only segment-end streams."""
        streams = stream_arithmetic(self.stream_dtype, self.alpha, self.beta, x0.dtype, owner=self)
        call = StageCall(self, streams, args, x0, positions, params)
        token, outputs = x0, {}
        for i in range(1, len(self.functions) + 1):
            sides = call.side_inputs if i == 1 else ()  # node 1 returns their gradients
            result = _StepFunction.apply(call, i, token, *params[i - 1], *sides)
            token = result[0]
            if len(result) == 2:
                outputs[i] = result[1]
        call.handover = None  # the forward's last stream pair: kept only as the nodes saved it
        call.monitor.forward_finite = streams.finish_forward()  # a host sync only until settled
        if call.monitor.forward_finite is False:  # make the step non-finite: it is skipped
            return [outputs[p] + float('nan') for p in positions]
        return [outputs[p] for p in positions]

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


# NOTE [ One backward step ]
#
# The backward of node i is one step per equation (``_StepFunction.backward``):
#
#   1. load (x_i, y_i) and (dL/dx_i, dL/dy_i)             the handover (NOTE [ Stream handover ])
#   2. Eq. 2: x_{i-1} = y_i / β                           streams.undo_beta
#   3. recompute F_i(x_{i-1}), back-propagate dL/dx_i     backward_branch, inside gradients_into
#                                                         (NOTE [ Parameter-gradient targets ])
#   4. Eq. 2: y_{i-1} = x_i − F_i(x_{i-1}) − α·x_{i-1}    streams.undo_step
#   5. dL/dx_{i-1} = J_i^T·dL/dx_i + α·dL/dx_i + β·dL/dy_i,   dL/dy_{i-1} = dL/dx_i
#   6. hand over to node i-1 (node 1: check y_0 = β·x_0; return dL/dx_0, and the gradients of the
#      side inputs, which every node's step 3 added into: NOTE [ Side inputs ] in ``stage_call``)
#
# Every function of dr2net_mm that one ``loss.backward()`` enters in a node that does not end a
# segment, with exact streams and a branch with a plan, in order (test_core_reversible.py counts
# them, besides the branch's own code: 10 functions in 4 files):
#
#   reversible.py      _StepFunction.backward             steps 1-6 (step 1: a read of the handover)
#   exact_streams.py   ExactStreams.undo_beta             step 2, by
#                      BetaBuffer.scale                   the inverse of the exact product y = β ⊗ x
#                      ExactStreams.branch_input          step 3: F_i's input, fp(X·2^-40)
#   param_grads.py     gradients_into                     step 3: the parameters' gradient targets
#   chunks.py          backward_branch                    step 3: the plan's parts, RNG replay
#   param_grads.py     _RouteLinear.__torch_function__    step 3, in the branch: each F.linear adds
#                      _LinearInto.forward, .backward     its weight gradient into its target
#   exact_streams.py   ExactStreams.add_step              step 4 (as ExactStreams.undo_step)
#
# A node that ends a segment also enters ExactStreams.check_forward (the forward's deferred range
# check) and StageCall.load (stage_call.py: its kept streams, the monitor); the stage's first
# backward node with side inputs, StageCall.open_side_gradients.


class _StepFunction(torch.autograd.Function):
    """One function of the stage as one autograd node: (x_{i-1}, y_{i-1}) -> (x_i, y_i) by Eq. 1.

    Inputs are ``(call, i, token, *parameters of F_i)``, for i = 1 followed by the stage's side
    inputs (NOTE [ Side inputs ] in ``stage_call``). ``token`` is the stage input x_0 for i = 1
    and the previous node's empty token tensor otherwise: it orders the nodes in the graph, while
    the streams and their gradients travel through the :class:`StageCall` (NOTE [ Stream handover ]
    in ``stage_call``). The parameters are inputs so that autograd sees them reached; where their
    gradients go: NOTE [ Parameter-gradient targets ] in ``param_grads``. Outputs: the token, and
    ``x_i`` in the model dtype when i is an output position. A node keeps nothing for backward
    unless its position ends a segment; its backward: NOTE [ One backward step ] above."""

    @staticmethod
    def forward(ctx, call: StageCall, i: int, token: Tensor, *params: Tensor):
        streams = call.streams
        if i == 1:
            x, y = streams.start(token)
        else:
            x, y = call.handover.x, call.handover.y
        if i == 1 or i - 1 in call.segment_ends:
            streams.begin_segment(x)
        if call.replays_rng:
            call.rng_states[i] = capture_rng_state(call.device)
        function = call.functions[i - 1]
        inp = streams.branch_input(x)
        f = run_branch(function, inp, call.args)
        check_branch_output(i, function, inp, f)
        del inp
        x_new = streams.next_x(f, x, y)
        del f, y
        y_new = streams.next_y(x)
        del x
        call.handover = Handover(i, x_new, y_new)
        ctx.call, ctx.position, ctx.kept = call, i, None
        ctx.set_materialize_grads(False)
        outputs = [torch.empty(0, dtype=call.model_dtype, device=call.device)]
        output = streams.output(x_new) if i in call.out_positions else None
        if output is not None:
            outputs.append(output)
        to_save: List[Tensor] = []
        if i in call.segment_ends:
            packed, buffer = streams.pack(x_new, output), streams.end_segment(i)
            call.keep_node(i, ctx, KeptStreams(len(packed), output is not None, len(buffer)))
            to_save = [*packed, y_new] + ([output] if output is not None else []) + list(buffer)
        if i == 1:  # ‖x_0‖ normalises the first segment's monitor even if a rebuilt x_0' is garbage
            to_save.append(torch.linalg.vector_norm(token))
        ctx.save_for_backward(*to_save)
        return tuple(outputs)

    @staticmethod
    @torch.compiler.disable  # eager under torch.compile (see ReversibleSequence._reversible_forward)
    @once_differentiable
    def backward(ctx, _token_grad: Optional[Tensor], g_output: Optional[Tensor] = None):
        call, i = ctx.call, ctx.position
        streams, saved, needs_x = call.streams, ctx.saved_tensors, ctx.needs_input_grad[2]

        # 1. The streams (x_i, y_i) and their gradients (dL/dx_i, dL/dy_i), left by node i+1 unless
        #    i ends a segment or node i+1 got no gradient (NOTE [ Stream handover ]).
        if ctx.kept is None and call.handover is not None and call.handover.position == i:
            _, x, y, g_x, g_y = call.handover
            call.handover = None
        else:  # (the first node of the stage's backward: its forward's range check first)
            streams.check_forward()
            x, y, g_x, g_y = call.load(i, ctx, saved)
        if g_output is not None:  # x_i is an output of the stage (received: never modified in place)
            g_output = g_output.to(call.model_dtype)
            g_x = g_output if g_x is None else g_x.add_(g_output)

        # 2. Eq. 2: x_{i-1} = y_i / β, in place (y's buffer holds x_{i-1}).
        x_prev = streams.undo_beta(y)
        del y

        # 3. Recompute F_i(x_{i-1}) as the forward did and back-propagate dL/dx_i through it:
        #    J_i^T·dL/dx_i lands in inp.grad, the parameter gradients in their targets.
        #    A side input's J^T·dL/dx_i lands in its proxy's .grad (NOTE [ Side inputs ]).
        function, params = call.functions[i - 1], call.params[i - 1]
        if call.side_inputs and call.side_grads is None:  # the stage's first backward node
            call.open_side_gradients()
        accumulators = [node for node, _ in ctx.next_functions[1:1 + len(params)]]
        inp = streams.branch_input(x_prev).detach().requires_grad_(needs_x and g_x is not None)
        with torch.set_grad_enabled(g_x is not None), torch.autocast(**call.autocast), \
                gradients_into(function, params, accumulators, g_x is not None,
                               route_linear=not call.autocast['enabled']) as returned:
            f = backward_branch(function, inp, call.recompute_args, g_x, call.rng_states.get(i, []))
        branch_vjp, inp = inp.grad, None

        # 4. Eq. 2: y_{i-1} = x_i − F_i(x_{i-1}) − α·x_{i-1}, in place (x's buffer holds y_{i-1}).
        y_prev = streams.undo_step(x, f, x_prev)
        del x, f

        # 5. From x_i = F_i(x_{i-1}) + α·x_{i-1} + y_{i-1} and y_i = β·x_{i-1}, in place:
        #    dL/dx_{i-1} = J_i^T·dL/dx_i + α·dL/dx_i + β·dL/dy_i,   dL/dy_{i-1} = dL/dx_i
        g_x_prev = None
        if needs_x:
            if g_x is not None:
                g_x_prev = (branch_vjp.add_(g_x, alpha=call.alpha) if branch_vjp is not None
                            else call.alpha * g_x)
            if g_y is not None:
                g_x_prev = (call.beta * g_y if g_x_prev is None
                            else g_x_prev.add_(g_y, alpha=call.beta))
        del g_y, branch_vjp

        # 6. Hand over to node i-1. Node 1 instead checks that the rebuilt pair satisfies
        #    y_0 = β·x_0, which also sends dL/dy_0 = dL/dx_1 to x_0: dL/dx_0 += β·dL/dy_0.
        if i > 1:
            call.handover = Handover(i - 1, x_prev, y_prev, g_x_prev, g_x)
            token_grad = (torch.zeros(0, dtype=call.model_dtype, device=call.device) if needs_x
                          else None)
            return (None, None, token_grad, *returned)
        call.monitor.check_first_input(x_prev, y_prev, saved[-1], call.beta)
        if needs_x and g_x is not None:
            g_x_prev = call.beta * g_x if g_x_prev is None else g_x_prev.add_(g_x, alpha=call.beta)
        side_grads = call.side_grads or ()  # complete now: every node's recomputation added to them
        call.side_grads, call.recompute_args = None, call.args
        return (None, None, g_x_prev, *returned, *side_grads)
