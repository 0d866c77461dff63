"""SimpleFeaturePyramid: ViTDet's simple feature pyramid as an mmdet neck, for a plain ViT backbone.

A plain ViT has one stride-16 map; a detector such as DINO wants several. ViTDet (Li et al., ECCV
2022) builds them from the last map alone: for each ``scale`` in ``scale_factors``

* 4: two stride-2 transposed convolutions (C -> C/2 -> C/4) with a channel LayerNorm and GELU
  between them;
* 2: one stride-2 transposed convolution (C -> C/2);
* 1: the map itself;
* 0.5: 2×2 max pooling;

then a 1×1 convolution to ``out_channels`` and a 3×3 convolution, each followed by a channel
LayerNorm (ViTDet's ``norm='LN'``, no bias in the convolutions). ``top_pool=True`` adds one more
level, a stride-2 max pooling (kernel 1) of the coarsest output, as ViTDet's ``LastLevelMaxPool``.

mmdet 3.3's installed package has no such neck (ViTDet is in its repository's ``projects/``, not
in the wheel), so this is our own module, registered as ``SimpleFeaturePyramid``. With
``scale_factors=(2.0, 1.0, 0.5)`` and ``top_pool=True`` it gives DINO its 4 levels at strides 8,
16, 32 and 64, as detrex's DINO-ViTDet.
"""
from typing import List, Sequence, Tuple

import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import Tensor, nn

__all__ = ['SimpleFeaturePyramid', 'LayerNorm2d']

SCALES = (4.0, 2.0, 1.0, 0.5)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (each pixel normalised on its own)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _rescale(scale: float, channels: int) -> Tuple[nn.Module, int]:
    """The resampling layers of one level and their output channels."""
    if scale == 4.0:
        half = channels // 2
        return nn.Sequential(nn.ConvTranspose2d(channels, half, 2, stride=2), LayerNorm2d(half),
                             nn.GELU(), nn.ConvTranspose2d(half, half // 2, 2, stride=2)), half // 2
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), channels // 2
    if scale == 1.0:
        return nn.Identity(), channels
    return nn.MaxPool2d(2, stride=2), channels


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid (module docstring).

    Args:
        in_channels: channels of the backbone's map (ViT-L: 1024); an int or a one-element list.
        out_channels: channels of every output level.
        scale_factors: the levels, finest first, each one of 4, 2, 1, 0.5 (relative to the input
            map's resolution), decreasing.
        top_pool: add a last level, the coarsest output max-pooled with stride 2.
        in_index: which backbone output to use (default: the last).
        eps: LayerNorm epsilon (ViTDet: 1e-6).
    """

    def __init__(self, in_channels, out_channels: int = 256,
                 scale_factors: Sequence[float] = (2.0, 1.0, 0.5), top_pool: bool = True,
                 in_index: int = -1, eps: float = 1e-6, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(in_channels, (list, tuple)):
            if len(in_channels) != 1:
                raise ValueError(f'in_channels={list(in_channels)}: SimpleFeaturePyramid takes one '
                                 'backbone map; give its channels, e.g. in_channels=1024')
            in_channels = in_channels[0]
        scales = tuple(float(s) for s in scale_factors)
        if not scales or any(s not in SCALES for s in scales) or list(scales) != sorted(
                set(scales), reverse=True):
            raise ValueError(f'scale_factors={tuple(scale_factors)}: give decreasing values out '
                             f'of {SCALES}, e.g. (2.0, 1.0, 0.5)')
        if 4.0 in scales and in_channels % 4 or 2.0 in scales and in_channels % 2:
            raise ValueError(f'in_channels={in_channels} must be divisible by 4 for scale 4 and by '
                             '2 for scale 2 (the transposed convolutions halve the channels)')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_factors, self.top_pool, self.in_index = scales, bool(top_pool), in_index
        self.stages = nn.ModuleList()
        for scale in scales:
            rescale, channels = _rescale(scale, in_channels)
            self.stages.append(nn.Sequential(
                rescale,
                nn.Conv2d(channels, out_channels, 1, bias=False), LayerNorm2d(out_channels, eps),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels, eps)))

    @property
    def num_outs(self) -> int:
        return len(self.scale_factors) + int(self.top_pool)

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        x = inputs[self.in_index]
        outs: List[Tensor] = [stage(x) for stage in self.stages]
        if self.top_pool:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
