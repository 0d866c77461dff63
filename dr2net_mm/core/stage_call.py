"""One reversible forward call of a stage: what its per-function autograd nodes share.

The autograd graph of a reversible stage orders its nodes by empty *token* tensors; the streams and
their gradients, which are large, travel beside the graph, in the :class:`StageCall` (see
NOTE [ Stream handover ]).
"""
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .autocast import autocast_state
from .chunks import RNGState, backward_branch
from .monitor import ReconstructionMonitor

# NOTE [ Stream handover ]
#
# In the forward, node i reads (x_{i-1}, y_{i-1}) from ``StageCall.handover`` and leaves (x_i, y_i)
# there for node i+1; after the last node the handover is emptied, so the forward keeps only what
# the segment-end nodes save (``KeptStreams``). The backward runs the nodes from n down to 1, and
# node i:
#
#   1. takes (x_i, y_i) and (dL/dx_i, dL/dy_i):
#      * the streams from the handover left by node i+1, or (``StageCall.load``), if i ends a
#        segment, from its own saved tensors (the rebuilt pair from node i+1, if any, then goes to
#        the monitor); in the rare backward where node i+1 got no gradient, by Eq. 2 from the
#        nearest kept streams above;
#      * the gradients from the handover (none at i = n), plus the stage output's gradient at i;
#   2. rebuilds (x_{i-1}, y_{i-1}) in place, in the same two buffers;
#   3. leaves Handover(i-1, x_{i-1}, y_{i-1}, dL/dx_{i-1}, dL/dy_{i-1}) for node i-1.
#
# So one stream pair and one gradient pair are alive at a time. A handover whose position is not i
# (left by a backward that did not reach node i) is dropped.

# NOTE [ Side inputs ]
#
# An extra argument of the stage that is a tensor requiring grad (``StageCall.side_inputs``) is an
# input of node 1 only, whose backward runs last. Every function uses it, so
#
#   dL/ds = Σ_i (∂F_i/∂s)^T · dL/dx_i
#
# The stage's first backward node (whichever that is) replaces each side input in the
# recomputation's arguments by a *proxy*: a detached alias whose ``.grad`` is a zero buffer
# (``open_side_gradients``). Every node's recomputation back-propagates into the proxy, so autograd
# adds its term into that one buffer in place; node 1 returns the buffers. One buffer per side input
# is alive during the stage's backward, nothing per function. (Unlike a parameter's, a side input's
# gradient is computed even where the engine will drop it: ``torch.autograd.grad`` without it.)


def graph_kept() -> bool:
    """Whether the running backward keeps the graph for another (``retain_graph=True``); True
    where torch cannot say."""
    query = getattr(torch._C._autograd, '_get_current_graph_task_keep_graph', None)
    return True if query is None else bool(query())


class Handover(NamedTuple):
    """The streams at ``position`` (stream dtype), and in backward their gradients (model dtype)."""
    position: int
    x: Tensor
    y: Tensor
    grad_x: Optional[Tensor] = None
    grad_y: Optional[Tensor] = None


class KeptStreams(NamedTuple):
    """How a segment-end node's saved tensors hold its streams:
    ``(*x_packed, y, output?, *buffer_packed[, ‖x_0‖])`` (``streams.pack`` and ``end_segment``)."""
    x_tensors: int  # tensors packing x_i
    has_output: bool  # x_i is packed against the stage output x_i in the model dtype, saved after y
    buffer_tensors: int  # tensors packing the segment's β buffer (exact streams)

    def unpack(self, saved: Tuple[Tensor, ...], streams, consume: bool) -> Tuple[Tensor, Tensor]:
        """The kept (x_i, y_i), which the backward rebuilds in place. With ``consume`` (the node's
        own backward: NOTE [ Kept streams are consumed ]) the saved tensors themselves where they
        hold a stream, and the memory of a packed remainder released once read; else copies."""
        output = saved[self.x_tensors + 1] if self.has_output else None
        x = streams.unpack(saved[:self.x_tensors], output)
        y = saved[self.x_tensors]
        if consume:  # x_i is X itself, or new: then the remainder it was packed into is let go
            for packed in saved[:self.x_tensors]:
                if packed.data_ptr() != x.data_ptr():
                    packed.untyped_storage().resize_(0)
            return x, y
        if any(x.data_ptr() == t.data_ptr() for t in saved):
            x = x.clone()
        return x, y.clone()

    def buffer(self, saved: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """The tensors packing the β buffer of the segment that ends here."""
        first = self.x_tensors + 1 + int(self.has_output)
        return saved[first:first + self.buffer_tensors]


class StageCall:
    """State of one reversible forward call of ``stage``, shared by its per-function nodes: the
    functions and their trainable parameters, the extra ``args`` (with the side inputs and their
    gradients, NOTE [ Side inputs ]), the stream arithmetic
    ``streams``, the RNG state and autocast settings each function ran with, the handover slot, the
    segment-end nodes (by weak reference) and the reconstruction-error monitor."""

    def __init__(self, stage: nn.Module, streams, args: Tuple[Any, ...], x0: Tensor,
                 out_positions: Tuple[int, ...], params: List[List[Tensor]]):
        self.functions = list(stage.functions)
        self.params = params
        self.args = args
        for k, a in enumerate(args):
            inner = a.values() if isinstance(a, dict) else a if isinstance(a, (list, tuple)) else ()
            if any(isinstance(t, Tensor) and t.requires_grad for t in inner):
                raise ValueError(
                    f'extra argument {k} of the reversible stage holds a tensor that requires grad '
                    f'inside a {type(a).__name__}: its gradient would be lost; pass that tensor as an '
                    'argument of its own (a side input) or detach it')
        self.side_positions = [k for k, a in enumerate(args)
                               if isinstance(a, Tensor) and a.requires_grad]
        self.side_inputs = [args[k] for k in self.side_positions]
        self.side_grads: Optional[List[Optional[Tensor]]] = None  # during a backward: accumulators
        self.recompute_args = args  # args of the backward's recomputations (side inputs: proxies)
        self.alpha, self.beta = stage.alpha, stage.beta
        self.model_dtype, self.device = x0.dtype, x0.device
        self.out_positions = out_positions
        self.streams = streams
        self.segment_ends = stage.segment_boundaries()  # positions whose streams are kept
        self.replays_rng = stage.preserve_rng_state and stage.training
        self.rng_states: Dict[int, RNGState] = {}  # filled by the forward when it replays RNG
        self.autocast = autocast_state(x0.device)
        self.handover: Optional[Handover] = None
        self.kept_nodes: Dict[int, Any] = {}  # segment end -> weak reference to its node
        self.monitor = ReconstructionMonitor(streams, stage._record_errors)

    def load(self, i: int, node: Any, saved: Tuple[Tensor, ...]
             ) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """Step 1 of node i's backward, ``(x_i, y_i, dL/dx_i, dL/dy_i)``, where the handover does not
        hold the streams: node i ends a segment (``node.kept``), or node i+1 got no gradient
        (NOTE [ Stream handover ]). ``node``: the node's context, ``saved`` its saved tensors."""
        handed, self.handover = self.handover, None
        if handed is not None and handed.position != i:
            handed = None
        g_x, g_y = (handed.grad_x, handed.grad_y) if handed is not None else (None, None)
        if node.kept is not None:  # i ends a segment: its streams were kept
            consume = not graph_kept()
            x, y = node.kept.unpack(saved, self.streams, consume)
            if handed is not None:  # rebuilt by the next segment's backward
                self.monitor.check_kept_input(i, handed.x, handed.y, x, y)
            del handed
            self.streams.load_segment(i, node.kept.buffer(saved), x, consume)
        else:
            x, y = self.rebuild_from_kept(i)
        return x, y, g_x, g_y

    def open_side_gradients(self) -> None:
        """At the stage's first backward node: the recomputations' args with each side input
        replaced by a proxy whose ``.grad`` accumulates dL/d(side input) (NOTE [ Side inputs ])."""
        args, self.side_grads = list(self.args), []
        for k in self.side_positions:
            args[k] = args[k].detach().requires_grad_()
            args[k].grad = torch.zeros_like(args[k])
            self.side_grads.append(args[k].grad)
        self.recompute_args = tuple(args)

    def rebuild_from_kept(self, i: int) -> Tuple[Tensor, Tensor]:
        """(x_i, y_i) by Eq. 2 from the nearest kept streams above i, without gradients (for node i
        when node i+1 got no gradient): each function recomputed as the forward ran it."""
        above = min(p for p in self.segment_ends if p > i)
        node = self.kept_nodes[above]()
        if node is None:
            raise RuntimeError(
                f'reversible stage: the gradient reached function {i} but not function {i + 1}, '
                f'and the graph keeping the streams at position {above} is gone; keep the stage\'s '
                'outputs alive until backward')
        saved = tuple(t.detach() for t in node.saved_tensors)
        x, y = node.kept.unpack(saved, self.streams, consume=False)
        self.streams.load_segment(above, node.kept.buffer(saved), x, consume=False)
        for j in range(above, i, -1):
            x_prev = self.streams.undo_beta(y)
            with torch.no_grad(), torch.autocast(**self.autocast):
                f = backward_branch(self.functions[j - 1], self.streams.branch_input(x_prev),
                                    self.args, None, self.rng_states.get(j, []))
            x, y = x_prev, self.streams.undo_step(x, f, x_prev)
        return x, y

    # NOTE [ Kept streams are consumed ]
    #
    # A segment-end node's saved tensors stay alive until its backward returns, so the streams it
    # rebuilds from them would exist twice during that backward (the first backward node of a
    # stage, the last branch, would hold the whole kept state twice: 6 bytes per element and more,
    # the largest transient of a ViT-B backward). Its backward therefore rebuilds in place in what
    # was saved: y_i, the β buffer's limbs and an unpacked x_i are the saved tensors themselves,
    # and the int32 remainder that x_i was packed into (against the stage output) gives its memory
    # back once read. Not when the running backward keeps the graph (``retain_graph=True``, as
    # gradcheck does), nor where torch cannot say so (2.1: :func:`graph_kept`): then, and in
    # ``rebuild_from_kept`` (a node whose own backward has not run), the streams are copies.

    def keep_node(self, position: int, node: Any, kept: KeptStreams) -> None:
        """Record that ``node`` (a segment end) saved its streams as ``kept``."""
        node.kept = kept
        self.kept_nodes[position] = weakref.ref(node)
