"""``LeanUPerHead``: mmseg's UPerHead with its convolution stages recomputed in backward.

UPerHead works at 512 channels down to stride 4, and every ConvModule keeps three maps for backward
(the convolution's input, the BatchNorm input, the ReLU output); the fusion keeps the concatenation
of all four levels at stride 4 (4 × 512 channels). At 512², batch 2 that is most of a GB.

``LeanUPerHead`` is the same network (a subclass: same modules, arguments and state-dict keys, so a
UPerHead checkpoint loads unchanged) that, while training with gradients, runs each stage through
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` and so keeps only the stages'
inputs. The stages are

* each lateral 1×1 ConvModule ``l_i(x_i)``;
* the pooling pyramid and its bottleneck, ``P = bottleneck(cat(x_top, PPM(x_top)))``;
* each FPN 3×3 ConvModule ``f_i(l_i + up(l_{i+1} + ...))`` (the top-down sum itself keeps nothing);
* the fusion and the classifier, ``cls_seg(fpn_bottleneck(cat(f_0, up(f_1), up(f_2), up(P))))``,
  whose inputs are the levels before upsampling, so the 4 × 512-channel concatenation is never kept.

Backward recomputes one stage at a time. The operations and their order are UPerHead's, so outputs
are bitwise equal (eval and training) and gradients equal. Recomputation re-runs BatchNorm in
training mode; its running statistics are put back afterwards, so they are updated once per step as
in UPerHead. Dropout in ``cls_seg`` draws the same mask again (checkpoint restores the RNG state).
In eval, or without gradients, the same operations run without checkpointing.
"""
from functools import partial
from typing import Callable, List

import torch
from mmseg.models.decode_heads import UPerHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

__all__ = ['LeanUPerHead']


@MODELS.register_module()
class LeanUPerHead(UPerHead):
    """UPerHead that keeps only its stages' inputs for backward (see the module docstring).
    Arguments: UPerHead's."""

    def _stage(self, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        """``fn(*inputs)``, recomputed in backward when training with gradients."""
        if not (self.training and torch.is_grad_enabled()):
            return fn(*inputs)
        calls = []

        def run(*args):
            if not calls:  # the forward
                calls.append(True)
                return fn(*args)
            norms = [m for m in self.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
            kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
                    for m in norms]
            try:
                return fn(*args)
            finally:  # the forward already updated the running statistics
                for m, (mean, var, count) in zip(norms, kept):
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                    m.num_batches_tracked.copy_(count)

        return checkpoint(run, *inputs, use_reentrant=False)

    def _pyramid(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def _fuse(self, *levels: Tensor, classify: bool) -> Tensor:
        size = levels[0].shape[2:]
        outs = [levels[0]] + [resize(level, size=size, mode='bilinear',
                                     align_corners=self.align_corners) for level in levels[1:]]
        feats = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.cls_seg(feats) if classify else feats

    def _head(self, inputs: List[Tensor], classify: bool) -> Tensor:
        inputs = self._transform_inputs(inputs)
        laterals = [self._stage(conv, inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self._stage(self._pyramid, inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], size=laterals[i - 1].shape[2:], mode='bilinear',
                align_corners=self.align_corners)
        levels = [self._stage(self.fpn_convs[i], laterals[i]) for i in range(len(laterals) - 1)]
        levels.append(laterals[-1])
        return self._stage(partial(self._fuse, classify=classify), *levels)

    def _forward_feature(self, inputs: List[Tensor]) -> Tensor:
        return self._head(inputs, classify=False)

    def forward(self, inputs: List[Tensor]) -> Tensor:
        return self._head(inputs, classify=True)
