"""What every Dr²Net backbone does with the residual branches of its blocks (pure PyTorch).

* :func:`stage_options` and :func:`branch_sequence`: the checked Dr²Net arguments of a reversible
  stage, and the stage built from a framework model's blocks, one branch per residual add;
* :func:`checkpointed` and :func:`checkpoint_branches`: ``with_cp``, one rule for every backbone (as
  mmdet's single ``with_cp`` branch per block and timm's ``checkpoint_seq``), and
  :func:`recompute_after` for the layers after a reversible stage;
* :func:`window_attention_plan`, :func:`fused_attention_plan`, :func:`fused_mlp_plan` and
  :func:`token_plan`: how the reversible backward recomputes a window-attention branch (Swin,
  Video Swin), a global-attention branch (ViT, VideoMAE, Pix4Point's ViT: by groups of heads, its
  backward in the same pass), their MLP branches (by runs of tokens and groups of hidden units,
  likewise) or any token-wise branch part by part (the ``plan`` protocol of
  :mod:`dr2net_mm.core.chunks`); :func:`global_attention_plan`, by runs of query rows, and
  :func:`token_plan` serve under autocast.
"""
import functools
from typing import Any, Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .checks import check_bool, check_segment_size, parse_stream_dtype
from .core import ReversibleSequence
from .core import chunks
from .core.autocast import autocast_state
from .core.chunks import BranchPlan, FusedPlan, row_parts, same_layout

__all__ = [
    'StageOptions', 'stage_options', 'branch_sequence', 'check_block_type', 'checkpointed',
    'checkpoint_branches', 'recompute_after', 'window_attention_plan', 'global_attention_plan',
    'attention_rows', 'attention_mask_rows', 'sdpa', 'token_plan', 'AttentionWeights',
    'head_groups', 'attention_mask_block', 'fused_attention_plan', 'MLPWeights', 'ffn_weights',
    'mlp_parts', 'fused_mlp_plan'
]


# the fewest token rows of a part of a token-wise branch (matrix products stay efficient)
MIN_PART_ROWS = 64


class StageOptions(NamedTuple):
    """The Dr²Net arguments of a reversible stage (their meaning: ``Dr2NetBackboneMixin``)."""
    alpha: float
    beta: float
    reversible: bool
    stream_dtype: Union[torch.dtype, str]
    segment_size: Optional[int]


def stage_options(alpha: float, beta: float, reversible: bool,
                  stream_dtype: Union[torch.dtype, str], segment_size: Optional[int]) -> StageOptions:
    """The arguments checked (α, β are checked by each stage, against ``reversible``)."""
    return StageOptions(alpha, beta, check_bool('reversible', reversible),
                        parse_stream_dtype(stream_dtype), check_segment_size(segment_size))


def branch_sequence(blocks: Iterable[nn.Module],
                    branch_types: Sequence[Callable[[nn.Module], nn.Module]],
                    options: StageOptions) -> ReversibleSequence:
    """The reversible stage over ``blocks``: per block, in order, one branch of each of
    ``branch_types`` (attention, then MLP: ``2·depth`` branches). The branches hold references to
    the blocks' submodules and the stage registers none of them, so the blocks keep their
    state-dict keys and the stage adds none."""
    functions = [branch(block) for block in blocks for branch in branch_types]
    return ReversibleSequence(functions, register_functions=False, **options._asdict())


def check_block_type(blocks: Iterable[nn.Module], block_type: type, owner: str) -> None:
    """ValueError naming ``owner`` unless every block runs ``block_type.forward``: the branch types
    of a backbone reproduce that block's two residual branches and no other."""
    odd = sorted({type(b).__name__ for b in blocks if type(b).forward is not block_type.forward})
    if odd:
        raise ValueError(f'{owner} uses {odd} blocks; Dr²Net runs {block_type.__module__}.'
                         f'{block_type.__qualname__} blocks (pre-norm attention, then MLP branch)')


def checkpointed(function: Callable[..., Any], x: Tensor, *args: Any, enabled: bool) -> Any:
    """``function(x, *args)``; when ``enabled`` and ``x`` requires grad, recomputed in backward from
    ``x`` instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant, dropout and
    drop-path masks replayed). The one checkpointing of the backbones: ``with_cp`` branches and
    blocks (:func:`checkpoint_branches`) and the layers after a reversible stage
    (:func:`recompute_after`)."""
    if enabled and x.requires_grad and torch.is_grad_enabled():
        return checkpoint(function, x, *args, use_reentrant=False)
    return function(x, *args)


def recompute_after(sequence: ReversibleSequence, layer: Callable[..., Any], x: Tensor,
                    *args: Any) -> Any:
    """``layer(x, *args)`` after a reversible stage (e.g. patch merging): in reversible training
    recomputed in backward from ``x``, the stage output that the stage keeps for its own backward
    anyway, instead of keeping the layer's activations (deterministic, exact)."""
    return checkpointed(layer, x, *args, enabled=sequence.reversible and sequence.training)


def checkpoint_branches(with_cp: bool, sequence: ReversibleSequence) -> bool:
    """Whether ``with_cp`` recomputes the branches (or blocks) of ``sequence`` in backward: unless
    the stage trains reversibly, which keeps no per-branch activations (checkpointing would only
    recompute twice)."""
    return with_cp and not (sequence.reversible and sequence.training)


def window_attention_plan(windows: Tensor, batch: int, attention: Callable[..., Tensor], heads: int,
                          mask: Optional[Tensor], merge: Callable[[Tensor], Tensor]
                          ) -> Optional[BranchPlan]:
    """A window-attention branch as runs of windows: ``windows`` ``(batch·nW, T, C)`` (shifted,
    padded, partitioned), ``body`` = ``attention(windows, mask=...)`` on a run of them with the
    matching rows of the ``(nW, T, T)`` shifted-window ``mask`` (or None), ``merge`` = the rest of
    the branch.

    A part holds whole images (or clips) when one of them is small enough (qkv ``3·T·C`` or the
    attention matrix ``heads·T²`` per window, :func:`~dr2net_mm.core.chunks.row_parts`), else runs
    of windows inside each. None when one part would hold everything (the branch runs as it is)."""
    n_windows, tokens, channels = windows.shape[0] // batch, windows.shape[1], windows.shape[2]
    row_elements = max(3 * tokens * channels, heads * tokens * tokens)
    if len(row_parts(n_windows, row_elements)) == 1:  # whole images per part
        parts = row_parts(batch * n_windows, row_elements, align=n_windows)
    else:  # runs of windows inside each image
        parts = [slice(b * n_windows + p.start, b * n_windows + p.stop)
                 for b in range(batch) for p in row_parts(n_windows, row_elements)]
    if len(parts) == 1:
        return None

    def body(h: Tensor, part: slice) -> Tensor:
        if mask is None or (part.start % n_windows == 0 and h.shape[0] % n_windows == 0):
            return attention(h, mask=mask)
        start = part.start % n_windows
        return attention(h, mask=mask[start:start + h.shape[0]])

    return BranchPlan(windows, parts, body, merge)


def token_plan(x: Tensor, hidden: int, layers: Callable[[Tensor], Tensor],
               drop_path: Callable[[Tensor], Tensor]) -> Optional[BranchPlan]:
    """A branch ``F(x) = drop_path(layers(x))`` whose ``layers`` act on every token alone (norm,
    MLP, layer scale) as runs of token rows, sized by the widest layer's width ``hidden`` (a run's
    widest activation holds at most ``PART_ELEMENTS`` elements and at most half of ``x``, but at
    least :data:`MIN_PART_ROWS` rows); None when one run of ``PART_ELEMENTS`` would hold all
    tokens."""
    channels = x.shape[-1]
    # a part's widest layer holds at most PART_ELEMENTS elements, and at most half a stream (so
    # that for short sequences it is small beside the streams), but never under MIN_PART_ROWS rows
    rows = x.numel() // channels
    if len(row_parts(rows, hidden)) == 1:
        return None
    cap = max(x.numel() // 2, MIN_PART_ROWS * hidden)
    parts = row_parts(rows, hidden * max(1.0, chunks.PART_ELEMENTS / cap))
    return BranchPlan(x.reshape(-1, channels), parts, lambda h, part: layers(h),
                      lambda out: drop_path(out.view(x.shape)),
                      merge_vjp=lambda grad: drop_path(grad).reshape(-1, channels))


def attention_rows(batch: int, tokens: int, heads: int) -> Optional[List[slice]]:
    """The query rows of a global-attention branch over ``batch`` samples of ``tokens`` tokens as
    parts: runs of query rows inside each sample, each holding about
    :data:`~dr2net_mm.core.chunks.PART_ELEMENTS` attention weights (``heads·tokens`` per row).
    None when one sample's attention fits in one part (the branch runs as it is)."""
    per_sample = row_parts(tokens, heads * tokens)
    if len(per_sample) == 1:
        return None
    return [slice(b * tokens + p.start, b * tokens + p.stop) for b in range(batch)
            for p in per_sample]


def global_attention_plan(parts: Sequence[slice], qkv: Tensor, heads: int,
                          attend: Callable[[Tensor, Tensor, Tensor, int, slice], Tensor],
                          project: Callable[[Tensor], Tensor],
                          drop_path: Callable[[Tensor], Tensor]) -> BranchPlan:
    """A multi-head self-attention branch ``F(x) = drop_path(project(attention(qkv)))`` by runs of
    query rows (``parts`` from :func:`attention_rows`), with a shared prologue: ``qkv``
    ``(B, N, 3·D)`` (the qkv projection of the normalised input, columns q | k | v, each
    ``heads × D/heads``) is computed once; its K and V columns are the plan's ``shared`` views (per sample, so that no
    part's backward allocates the gradient of all samples), read whole by every part (their
    gradients add up across parts); ``body`` takes a part's q columns through
    ``attend(q, k, v, sample, rows)`` (the ``(1, heads, r, d)`` queries of the rows ``rows`` of
    sample ``sample`` against its ``(1, heads, N, d)`` keys and values; returns ``(1, heads, r,
    d)``) and ``project`` (row-wise layers: output projection, layer scale); ``merge`` reshapes
    to ``(B, N, C)`` and applies ``drop_path``."""
    batch, tokens, width = qkv.shape
    head_dims = width // (3 * heads)

    def shared(h: Tensor) -> List[Tensor]:  # k_0, v_0, k_1, v_1, ...: (1, heads, N, d) views
        split = h.view(batch, tokens, 3, heads, head_dims)
        return [split[b:b + 1, :, j].transpose(1, 2) for b in range(batch) for j in (1, 2)]

    def body(h: Tensor, part: slice, *kv: Tensor) -> Tensor:
        sample, rows = divmod(part.start, tokens)
        q = h.view(1, h.shape[0], 3, heads, head_dims)[:, :, 0].transpose(1, 2)
        out = attend(q, kv[2 * sample], kv[2 * sample + 1], sample,
                     slice(rows, rows + h.shape[0]))
        return project(out.transpose(1, 2).reshape(h.shape[0], heads * head_dims))

    return BranchPlan(qkv.reshape(batch * tokens, width), parts, body,
                      lambda out: drop_path(out.view(batch, tokens, -1)), shared=shared,
                      merge_vjp=lambda grad: drop_path(grad).reshape(batch * tokens, -1))


class AttentionWeights(NamedTuple):
    """The parameters of a multi-head self-attention branch ``gamma ⊙ proj(attention(qkv(n)))``
    (``n`` the normalised input) as :func:`fused_attention_plan` reads them: ``qkv`` the
    ``(3·heads·d, C)`` weight, rows q | k | v, each ``heads × d``; ``bias[j]`` the bias of q, k, v
    (j = 0, 1, 2) as (parameter, index of its first entry) or None (mmaction2's VideoMAE has no k
    bias); ``proj`` the ``(C, heads·d)`` weight and ``proj_bias``; ``gamma`` the layer scale
    ``(C,)`` or None; ``scale`` the logits' scale (None: ``d**-0.5``)."""
    qkv: Tensor
    bias: Tuple[Optional[Tuple[Tensor, int]], ...]
    proj: Tensor
    proj_bias: Optional[Tensor]
    gamma: Optional[Tensor]
    heads: int
    scale: Optional[float] = None

    @classmethod
    def of(cls, qkv: nn.Linear, proj: nn.Linear, heads: int, scale: Optional[float],
           gamma: Optional[Tensor], bias: Optional[Tuple[Optional[Tuple[Tensor, int]], ...]] = None
           ) -> 'AttentionWeights':
        """From a branch's ``qkv`` and ``proj`` linears; ``bias`` None: ``qkv``'s own bias (if
        any), a third each for q, k and v."""
        if bias is None:
            width = qkv.out_features // 3
            bias = tuple(None if qkv.bias is None else (qkv.bias, j * width) for j in range(3))
        return cls(qkv.weight, bias, proj.weight, proj.bias, gamma, heads, scale)


def head_groups(batch: int, tokens: int, heads: int, head_dim: int
                ) -> List[Tuple[slice, List[slice]]]:
    """The parts of a fused attention branch: groups of heads whose q, k and v hold about a quarter
    of :data:`~dr2net_mm.core.chunks.PART_ELEMENTS` (with their gradients, a group's working set
    stays near one part), each with its runs of query rows, sized so that the group's attention
    weights, if a kernel writes them out, hold about ``PART_ELEMENTS``: ``[(heads, [rows, ...])]``."""
    groups = row_parts(heads, 4 * 3 * batch * tokens * head_dim)
    return [(g, row_parts(tokens, batch * (g.stop - g.start) * tokens)) for g in groups]


def attention_mask_block(mask: Optional[Tensor], heads: slice, rows: slice) -> Optional[Tensor]:
    """The entries of an attention mask (``scaled_dot_product_attention`` semantics: broadcastable
    to ``(B, heads, N, N)``) for the heads ``heads`` and the query rows ``rows`` of every sample."""
    if mask is None:
        return None
    mask = mask.view((1, ) * (4 - mask.dim()) + tuple(mask.shape))
    if mask.shape[1] > 1:
        mask = mask[:, heads]
    return mask[:, :, rows] if mask.shape[2] > 1 else mask


def fused_attention_plan(x: Tensor, norm: Callable[[Tensor], Tensor], weights: AttentionWeights,
                         mask: Optional[Tensor], drop_path: Callable[[Tensor], Tensor]
                         ) -> Optional[FusedPlan]:
    """A multi-head self-attention branch ``F(x) = drop_path(gamma ⊙ proj(attention(qkv(norm(x)))))``
    as a :class:`~dr2net_mm.core.chunks.FusedPlan`: by groups of heads (:func:`head_groups`), as
    ``proj`` is a sum over heads, ``proj(o) = b + Σ_g o_g·W_g^T``. See NOTE [ Attention by head
    groups ]. None under autocast (the hand-written backward runs in the model's dtype) and when
    one group and one run would hold everything (the branch runs as it is)."""
    if autocast_state(x.device)['enabled']:
        return None
    groups = head_groups(x.shape[0], x.shape[1], weights.heads,
                         weights.qkv.shape[0] // (3 * weights.heads))
    if len(groups) == 1 and len(groups[0][1]) == 1:
        return None
    core = functools.partial(_heads_forward_backward, w=weights, mask=mask)
    return FusedPlan(lambda g: _normed_and_scaled(x, g, norm, weights.gamma, core), drop_path,
                     drop_path)


# NOTE [ Attention by head groups ]
#
# The reversible backward of an attention branch holds, besides the streams, what the branch's
# recomputation keeps. Recomputed by runs of query rows (``global_attention_plan``), that is the qkv
# rows of all heads and their gradient (3 + 3 rows of x) plus the branch's input, its norm and
# output. By groups of heads it is x, n = norm(x), dL/dn and the output P (4 rows of x) plus one
# group's q, k, v and their gradients. Per group g, with the rows of dL/dP given first:
#
#   q_g, k_g, v_g = n·W_{q,g}^T + b_{q,g}, ...     (B, g, N, d), k_g and v_g leaves of a small graph
#   o_g = scaled_dot_product_attention(q_g, k_g, v_g)   by runs of query rows
#   P   += o_g·W_{p,g}^T                             in place (addmm_), P starts at proj's bias
#   dW_{p,g} += dP^T·o_g,   dL/do_g = dP·W_{p,g}      o_g's backward (autograd) -> dq_g, dk_g, dv_g
#   dL/dn += dq_g·W_{q,g} + dk_g·W_{k,g} + dv_g·W_{v,g},   dW_{q,g} += dq_g^T·n, ...   in place
#
# then dgamma = Σ dL/dF ⊙ P, F = gamma ⊙ P, and norm's backward sends dL/dn to x.grad. Every
# product runs in the reversible forward (no gradients) exactly as in the backward, so F is
# recomputed bitwise. The gradients go where the engine's routed linears put theirs: into each
# parameter's ``.grad`` (the proxies' targets, NOTE [ Parameter-gradient targets ]), never into a
# weight-sized temporary.


def _into(param: Optional[Tensor]) -> Optional[Tensor]:
    """Where a hand-written backward adds ``param``'s gradient (a proxy's ``.grad``: its target),
    or None when it is not wanted."""
    return param.grad if param is not None and param.requires_grad else None


def _heads(t: Tensor, batch: int, rows: int, head_dim: int) -> Tensor:
    """``(B, r, g·d)`` rows as ``(B, g, r, d)`` heads (a view)."""
    return t.view(batch, rows, -1, head_dim).transpose(1, 2)


def _rows(t: Tensor) -> Tensor:
    """``(B, g, r, d)`` heads as ``(B, r, g·d)`` rows."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def _add_linear_grads(dy: Tensor, inp: Tensor, weight: Tensor, weight_into: Optional[Tensor],
                      bias_into: Optional[Tensor], inp_grad: Optional[Tensor]) -> None:
    """The backward of ``y = inp·weight^T + b`` (``(B, r, ·)`` rows), added in place, sample by
    sample: ``inp_grad += dy·weight``, ``weight_into += dy^T·inp``, ``bias_into += Σ dy``."""
    for b in range(dy.shape[0]):
        if inp_grad is not None:
            inp_grad[b].addmm_(dy[b], weight)
        if weight_into is not None:
            weight_into.addmm_(dy[b].t(), inp[b])
        if bias_into is not None:
            bias_into.add_(dy[b].sum(0))


def _normed_and_scaled(x: Tensor, grad: Optional[Tensor], norm: Callable[[Tensor], Tensor],
                       gamma: Optional[Tensor],
                       core: Callable[[Tensor, Optional[Tensor], Optional[Tensor]], Tensor]
                       ) -> Tensor:
    """``gamma ⊙ P``, ``P = core(norm(x), dL/dP, dL/dn)``, for the fused plans; with ``grad``
    (dL/d of it) its backward in the same pass: ``core`` adds its weights' gradients and dL/dn
    (into the zero buffer it is given, None: not wanted), then dgamma = Σ grad ⊙ P and norm's
    backward (autograd) send the rest on. Autograd records only norm and what ``core`` records.
    Without ``grad`` the same operations, recorded by autograd when gradients are enabled (the
    reference modes)."""
    manual = grad is not None
    with torch.set_grad_enabled(manual or torch.is_grad_enabled()):
        n_graph = norm(x)
    with torch.set_grad_enabled(not manual and torch.is_grad_enabled()):
        n = n_graph.detach() if manual else n_graph
        dn = torch.zeros_like(n) if manual and n_graph.requires_grad else None
        out = core(n, grad if grad is None or gamma is None else grad * gamma, dn)
        if manual:
            gamma_into = _into(gamma)
            if gamma_into is not None:
                gamma_into.add_((grad * out).sum(tuple(range(out.dim() - 1))))
            if dn is not None:
                torch.autograd.backward(n_graph, dn)
        return out if gamma is None else out.mul_(gamma)


def _heads_forward_backward(n: Tensor, g_out: Optional[Tensor], dn: Optional[Tensor],
                            w: AttentionWeights, mask: Optional[Tensor]) -> Tensor:
    """``P = proj(attention(qkv(n)))`` group by group; with ``g_out`` (dL/dP) the weights'
    gradients added into their targets and dL/dn into ``dn`` (not None: wanted)."""
    batch, tokens, _ = n.shape
    width = w.qkv.shape[0] // 3
    d = width // w.heads
    out = torch.zeros(batch, tokens, w.proj.shape[0], dtype=n.dtype, device=n.device)
    if w.proj_bias is not None:
        out += w.proj_bias
    qkv_into, proj_into, proj_bias_into = _into(w.qkv), _into(w.proj), _into(w.proj_bias)
    if g_out is not None and proj_bias_into is not None:
        proj_bias_into.add_(g_out.sum(tuple(range(g_out.dim() - 1))))
    for heads, runs in head_groups(batch, tokens, w.heads, d):
        cols = slice(heads.start * d, heads.stop * d)

        def weight(j: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
            """q, k or v (j = 0, 1, 2) of this group: weight, bias, and their gradients' targets."""
            rows = slice(j * width + cols.start, j * width + cols.stop)
            weight_into = None if qkv_into is None else qkv_into[rows]
            if w.bias[j] is None:
                return w.qkv[rows], None, weight_into, None
            bias, first = w.bias[j]
            entries = slice(first + cols.start, first + cols.stop)
            bias_into = _into(bias)
            return (w.qkv[rows], bias[entries], weight_into,
                    None if bias_into is None else bias_into[entries])

        def project(j: int, inp: Tensor) -> Tensor:
            weight_j, bias_j, _, _ = weight(j)
            y = torch.matmul(inp, weight_j.t())
            y = y if bias_j is None else y.add_(bias_j)
            y = _heads(y, batch, inp.shape[1], d)
            return y.requires_grad_() if g_out is not None else y

        k, v = project(1, n), project(2, n)
        w_p = w.proj[:, cols]
        for rows in runs:
            q = project(0, n[:, rows])
            with torch.set_grad_enabled(g_out is not None or torch.is_grad_enabled()):
                o = sdpa(q, k, v, attention_mask_block(mask, heads, rows), w.scale)
            o_rows = _rows(o)
            for b in range(batch):
                out[b, rows].addmm_(o_rows[b], w_p.t())
            if g_out is None:
                continue
            g_rows = g_out[:, rows]
            if proj_into is not None:
                for b in range(batch):
                    proj_into[:, cols].addmm_(g_rows[b].t(), o_rows[b])
            torch.autograd.backward(o, _heads(torch.matmul(g_rows, w_p), batch, q.shape[2], d))
            weight_q, _, q_into, bias_q_into = weight(0)
            _add_linear_grads(_rows(q.grad), n[:, rows], weight_q, q_into, bias_q_into,
                              None if dn is None else dn[:, rows])
        if g_out is not None:
            for j, t in ((1, k), (2, v)):
                weight_j, _, into, bias_into = weight(j)
                _add_linear_grads(_rows(t.grad), n, weight_j, into, bias_into, dn)
    return out


class MLPWeights(NamedTuple):
    """The parameters of an MLP branch ``gamma ⊙ fc2(act(fc1(n)))`` (``n`` the normalised input)
    as :func:`fused_mlp_plan` reads them: ``fc1`` the ``(hidden, C)`` weight and ``fc1_bias``,
    ``act`` an element-wise activation, ``fc2`` the ``(C, hidden)`` weight and ``fc2_bias``,
    ``gamma`` the layer scale ``(C,)`` or None."""
    fc1: Tensor
    fc1_bias: Optional[Tensor]
    act: Callable[[Tensor], Tensor]
    fc2: Tensor
    fc2_bias: Optional[Tensor]
    gamma: Optional[Tensor]

    @classmethod
    def of(cls, fc1: nn.Linear, act: Callable[[Tensor], Tensor], fc2: nn.Linear,
           gamma: Optional[Tensor]) -> 'MLPWeights':
        return cls(fc1.weight, fc1.bias, act, fc2.weight, fc2.bias, gamma)


def ffn_weights(ffn: nn.Module, gamma: Optional[Tensor]) -> Optional[MLPWeights]:
    """The weights of mmcv's ``FFN`` ``ffn`` (two linears; ``layers`` is ``[[fc1, act, dropout],
    fc2, dropout]``) with the layer scale ``gamma`` after it, or None for an FFN of more linears or
    with its own layer scale (``gamma2``)."""
    if ffn.num_fcs != 2 or not isinstance(ffn.gamma2, nn.Identity):
        return None
    (fc1, act, _), fc2 = ffn.layers[0], ffn.layers[1]
    return MLPWeights.of(fc1, act, fc2, gamma)


# hidden units of a group of a fused MLP branch come in multiples of this (whole SIMD registers and
# GEMM panels; also the narrowest group)
HIDDEN_ALIGN = 64
# the fewest token rows of a run of a fused MLP branch (its products stay efficient)
MIN_RUN_ROWS = 256


def mlp_parts(rows: int, channels: int, hidden: int) -> List[Tuple[slice, List[slice]]]:
    """The parts of a fused MLP branch over ``rows`` tokens of ``channels`` channels with ``hidden``
    hidden units: runs of rows, of at least :data:`MIN_RUN_ROWS` rows (all rows when there are
    fewer than twice as many) and longer where a run's whole activation still fits in a part;
    each with its groups of hidden units (multiples of :data:`HIDDEN_ALIGN`), whose activation
    over the run holds about :data:`~dr2net_mm.core.chunks.PART_ELEMENTS` elements and at most
    about half of the branch's input (as :func:`token_plan`'s parts): ``[(rows, [units, ...])]``."""
    scale = max(1.0, chunks.PART_ELEMENTS / max(1, rows * channels // 2))
    count = max(1, rows // max(MIN_RUN_ROWS, int(chunks.PART_ELEMENTS / (hidden * scale))))
    bounds = [round(k * rows / count) for k in range(count + 1)]
    return [(slice(a, b), row_parts(hidden, (b - a) * scale, align=HIDDEN_ALIGN))
            for a, b in zip(bounds[:-1], bounds[1:])]


def fused_mlp_plan(x: Tensor, norm: Callable[[Tensor], Tensor], weights: MLPWeights,
                   drop_path: Callable[[Tensor], Tensor]) -> Optional[FusedPlan]:
    """An MLP branch ``F(x) = drop_path(gamma ⊙ fc2(act(fc1(norm(x)))))`` on ``(..., C)`` tokens as
    a :class:`~dr2net_mm.core.chunks.FusedPlan`: by runs of tokens, each by groups of hidden
    units (:func:`mlp_parts`), as ``fc2`` is a sum over them. See NOTE [ MLP by hidden groups ].
    None under autocast (the hand-written backward runs in the model's dtype) and when the whole
    activation holds at most ``PART_ELEMENTS`` elements (the branch runs as it is)."""
    channels, hidden = x.shape[-1], weights.fc1.shape[0]
    rows = x.numel() // channels
    if autocast_state(x.device)['enabled'] or len(row_parts(rows, hidden)) == 1:
        return None
    parts = mlp_parts(rows, channels, hidden)
    return FusedPlan(lambda g: _mlp_by_runs(x, g, norm, weights, parts), drop_path, drop_path,
                     scratch_grad=True)


# NOTE [ MLP by hidden groups ]
#
# Cut into runs of tokens small enough to hold the whole hidden activation (``token_plan``), an
# MLP's products shrink in their row dimension: for a short sequence (ViT-L/16 at 256², 257
# tokens) runs of ~50 rows, whose products run at about half the speed of whole ones, and every
# run adds a whole weight-sized gradient. ``fc2`` is a sum over hidden units, so the branch runs
# by runs of at least MIN_RUN_ROWS tokens (all 257 there), and each run by groups of hidden units.
# Per run r (n_r = norm(x_r), as NOTE [ Attention by head groups ]) and group u:
#
#   a = n_r·W_{1,u}^T + b_{1,u},   h = act(a)
#   P_r += h·W_{2,u}^T                                 in place (addmm_), P_r starts at fc2's bias
#   dW_{2,u} += dP_r^T·h,   dL/dh = dP_r·W_{2,u}        then h is freed, and GELU's backward turns
#                                                      dL/dh into dL/da in place (any other act:
#                                                      autograd, a a leaf)
#   dW_{1,u} += (dL/da)^T·n_r,  db_{1,u} += Σ dL/da,  dL/dn_r += dL/da·W_{1,u}   in place
#
# then gamma and norm's backward for the run (``_normed_and_scaled``); dL/dx_r is written over the
# run's rows of dL/dP, read by then (the plan's ``scratch_grad``), and back-propagated once. A
# run holds x_r's norm and its gradient besides one group's a and dL/da (and h until dL/dh is
# formed); the forward runs the same products without gradients, so F is recomputed bitwise.


def _mlp_by_runs(x: Tensor, grad: Optional[Tensor], norm: Callable[[Tensor], Tensor],
                 w: MLPWeights, parts: List[Tuple[slice, List[slice]]]) -> Tensor:
    """``gamma ⊙ fc2(act(fc1(norm(x))))`` run by run (``parts`` from :func:`mlp_parts`), each run
    written into its rows of one buffer; with ``grad`` (dL/d of it, a buffer of its own:
    ``scratch_grad``) its backward in the same pass, dL/dx of each run written over the run's rows
    of ``grad`` once read, and back-propagated to ``x`` once."""
    channels = x.shape[-1]
    manual = grad is not None
    x_rows = x.reshape(-1, channels)
    g_rows = None if grad is None else grad.reshape(-1, channels)
    wants_x = manual and x.requires_grad
    dx = None
    if wants_x:
        dx = grad.view(x_rows.shape) if same_layout(grad, x) else torch.empty_like(x_rows)
    with torch.set_grad_enabled(not manual and torch.is_grad_enabled()):
        out = x_rows.new_empty(x_rows.shape[0], w.fc2.shape[0])
    for rows, groups in parts:
        x_r = x_rows[rows].detach().requires_grad_(wants_x) if manual else x_rows[rows]
        core = functools.partial(_hidden_forward_backward, w=w, groups=groups, out=out[rows])
        _normed_and_scaled(x_r, None if g_rows is None else g_rows[rows], norm, w.gamma, core)
        if wants_x:
            dx[rows] = x_r.grad
    if wants_x:
        torch.autograd.backward(x, dx.view(x.shape))
    return out.view(x.shape[:-1] + (-1, ))


def _hidden_forward_backward(n: Tensor, g_out: Optional[Tensor], dn: Optional[Tensor],
                             w: MLPWeights, groups: List[slice], out: Tensor) -> Tensor:
    """``P = fc2(act(fc1(n)))`` for ``(r, C)`` rows ``n``, written into ``out``, group by group of
    hidden units (``groups``); with ``g_out`` (dL/dP) the weights' gradients added into their
    targets and dL/dn into ``dn`` (not None: wanted)."""
    if w.fc2_bias is None:
        out.zero_()
    else:
        out.copy_(w.fc2_bias.expand_as(out))
    fc1_into, fc1_bias_into = _into(w.fc1), _into(w.fc1_bias)
    fc2_into, fc2_bias_into = _into(w.fc2), _into(w.fc2_bias)
    if g_out is not None and fc2_bias_into is not None:
        fc2_bias_into.add_(g_out.sum(0))
    # GELU's backward by hand, in place, once h is freed; any other activation's by autograd
    act_graph = g_out is not None and not isinstance(w.act, nn.GELU)
    for units in groups:
        w_1, w_2 = w.fc1[units], w.fc2[:, units]
        b_1 = None if w.fc1_bias is None else w.fc1_bias[units]
        a = torch.matmul(n, w_1.t()) if b_1 is None else torch.addmm(b_1, n, w_1.t())
        with torch.set_grad_enabled(act_graph or torch.is_grad_enabled()):
            h = w.act(a.requires_grad_() if act_graph else a)
        out.addmm_(h, w_2.t())
        if g_out is not None:
            if fc2_into is not None:
                fc2_into[:, units].addmm_(g_out.t(), h)
            g_a = torch.matmul(g_out, w_2)  # dL/dh, then dL/da
            if act_graph:
                torch.autograd.backward(h, g_a)
                g_a = a.grad
            else:
                h = None
                torch.ops.aten.gelu_backward.grad_input(g_a, a, approximate=w.act.approximate,
                                                        grad_input=g_a)
            _add_linear_grads(g_a[None], n[None], w_1,
                              None if fc1_into is None else fc1_into[units],
                              None if fc1_bias_into is None else fc1_bias_into[units],
                              None if dn is None else dn[None])
            del g_a
        del a, h  # before the next group's
    return out


def attention_mask_rows(mask: Optional[Tensor], sample: int, rows: slice) -> Optional[Tensor]:
    """The rows of an attention mask (``scaled_dot_product_attention`` semantics: broadcastable to
    ``(B, heads, N, N)``) for the queries ``rows`` of sample ``sample``."""
    mask = attention_mask_block(mask, slice(None), rows)
    return mask if mask is None or mask.shape[0] == 1 else mask[sample:sample + 1]


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
         scale: Optional[float] = None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` without dropout (``scale``: None is
    ``head_dim**-0.5``)."""
    if scale is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
