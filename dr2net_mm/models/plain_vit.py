"""PlainViT: the conventional ViT baseline (timm's blocks, ordinary autograd), the memory peer of
:class:`~dr2net_mm.models.vit.Dr2NetViT` in end-to-end finetuning comparisons."""
import functools
from typing import List, Optional, Tuple

from mmengine.registry import MODELS
from torch import Tensor

from .backbone import ConventionalMixin
from .vit import Dr2NetViT

__all__ = ['PlainViT']


@MODELS.register_module()
class PlainViT(ConventionalMixin, Dr2NetViT):
    """The conventional ViT (:class:`~dr2net_mm.models.backbone.ConventionalMixin`): the module,
    arguments, checkpoints and ``forward_tokens`` of :class:`~dr2net_mm.models.vit.Dr2NetViT`, its
    blocks run as timm runs them; ``with_cp=True`` checkpoints every block."""
    network = 'ViT'

    def _block_outputs(self, x: Tensor, out_indices: Tuple[int, ...],
                       attn_mask: Optional[Tensor]) -> List[Tensor]:
        blocks = list(self.blocks)[:out_indices[-1] + 1]
        if attn_mask is not None:
            blocks = [functools.partial(block, attn_mask=attn_mask) for block in blocks]
        return [x for b, x in enumerate(self._blocks_in_turn(blocks, x)) if b in out_indices]
