"""What every Dr²Net backbone does with the residual branches of its blocks (pure PyTorch).

* :func:`stage_options` and :func:`branch_sequence`: the checked Dr²Net arguments of a reversible
  stage, and the stage built from a framework model's blocks, one branch per residual add;
* :func:`checkpointed` and :func:`checkpoint_branches`: ``with_cp``, one rule for every backbone (as
  mmdet's single ``with_cp`` branch per block and timm's ``checkpoint_seq``), and
  :func:`recompute_after` for the layers after a reversible stage;
* :func:`window_attention_plan`, :func:`global_attention_plan` and :func:`token_plan`: how the
  reversible backward recomputes a window-attention branch (Swin, Video Swin), a global-attention
  branch (ViT, VideoMAE, Pix4Point's ViT) or a token-wise MLP branch part by part (the ``plan``
  protocol of :mod:`dr2net_mm.core.chunks`).
"""
from typing import Any, Callable, Iterable, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .checks import check_bool, check_segment_size, parse_stream_dtype
from .core import ReversibleSequence
from .core import chunks
from .core.chunks import BranchPlan, row_parts

__all__ = [
    'StageOptions', 'stage_options', 'branch_sequence', 'check_block_type', 'checkpointed',
    'checkpoint_branches', 'recompute_after', 'window_attention_plan', 'global_attention_plan',
    'attention_rows', 'attention_mask_rows', 'sdpa', 'token_plan'
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


def attention_mask_rows(mask: Optional[Tensor], sample: int, rows: slice) -> Optional[Tensor]:
    """The rows of an attention mask (``scaled_dot_product_attention`` semantics: broadcastable to
    ``(B, heads, N, N)``) for the queries ``rows`` of sample ``sample``."""
    if mask is None:
        return None
    mask = mask.view((1, ) * (4 - mask.dim()) + tuple(mask.shape))
    if mask.shape[0] > 1:
        mask = mask[sample:sample + 1]
    return mask[:, :, rows] if mask.shape[2] > 1 else mask


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
         scale: Optional[float] = None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` without dropout (``scale``: None is
    ``head_dim**-0.5``)."""
    if scale is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
