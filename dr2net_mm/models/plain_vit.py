"""PlainViT: the conventional ViT baseline (timm's blocks, ordinary autograd), the memory peer of
:class:`~dr2net_mm.models.vit.Dr2NetViT` in end-to-end finetuning comparisons."""
import functools
from typing import List, Optional, Tuple

import torch
from mmengine.registry import MODELS
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..checks import check_bool
from .vit import Dr2NetViT

__all__ = ['PlainViT']


@MODELS.register_module()
class PlainViT(Dr2NetViT):
    """The conventional ViT: the same module as :class:`~dr2net_mm.models.vit.Dr2NetViT` (same
    arguments, checkpoints and ``forward_tokens``) but its blocks run as timm runs them, ``x =
    block(x)`` with ordinary autograd on float32 activations -- the baseline of end-to-end finetuning.

    Why not ``Dr2NetViT(alpha=1, beta=0, reversible=False)``: that computes the same function, but its
    reference mode keeps the streams in ``stream_dtype`` (float64) under autograd, which would
    overstate the baseline's memory; this class is timm's computation and memory exactly. (α, β) stay
    (1, 0) and cannot be changed: :meth:`set_coefficients` raises (remove ``AlphaBetaHook`` from a
    baseline config).

    ``with_cp=True``: activation checkpointing of every block in training (``torch.utils.checkpoint``,
    non-reentrant; mmseg's and timm's ``with_cp`` / grad checkpointing), the memory peer of Dr²Net."""

    def __init__(self, *args, with_cp: bool = False, **kwargs):
        given = [k for k in ('alpha', 'beta', 'reversible', 'stream_dtype', 'segment_size')
                 if k in kwargs]
        if given:
            raise ValueError(f'PlainViT is the conventional ViT and takes no {given}; use Dr2NetViT '
                             'for a reversible backbone')
        with_cp = check_bool('with_cp', with_cp)
        super().__init__(*args, alpha=1.0, beta=0.0, reversible=False, **kwargs)
        self.with_cp = with_cp

    def set_coefficients(self, alpha: float, beta: float) -> None:
        raise TypeError('PlainViT is the conventional ViT baseline, its (alpha, beta) are fixed at '
                        "(1, 0); remove AlphaBetaHook from the config or use type='Dr2NetViT'")

    def _run_blocks(self, x: Tensor, out_indices: Tuple[int, ...],
                    attn_mask: Optional[Tensor]) -> List[Tensor]:
        outs = []
        checkpointing = self.with_cp and self.training and torch.is_grad_enabled()
        for b in range(out_indices[-1] + 1):
            block = self.blocks[b] if attn_mask is None else functools.partial(
                self.blocks[b], attn_mask=attn_mask)
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            if b in out_indices:
                outs.append(x)
        if self.norm is not None and out_indices[-1] == self.depth - 1:
            outs[-1] = self.norm(outs[-1])
        return outs
