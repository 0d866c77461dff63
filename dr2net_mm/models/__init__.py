"""Backbones, and DINO with a lean transformer, registered into MMEngine's root MODELS registry (and,
with mmseg, ``LeanUPerHead`` into mmseg's)."""
from importlib.util import find_spec

from .pretrained import PretrainedMismatchError
from .deformable_encoder import Dr2NetDeformableEncoder
from .dino import Dr2NetDINO
from .plain_vit import PlainViT
from .simple_fpn import SimpleFeaturePyramid
from .swin import Dr2NetSwin
from .vit import Dr2NetViT

__all__ = ['Dr2NetDeformableEncoder', 'Dr2NetDINO', 'Dr2NetSwin', 'Dr2NetViT', 'PlainViT',
           'PretrainedMismatchError', 'SimpleFeaturePyramid']

if find_spec('mmaction') is not None:  # the video backbones need mmaction2
    from .swin3d import Dr2NetSwin3D
    from .video_vit import Dr2NetVideoViT, PlainVideoViT
    __all__ += ['Dr2NetSwin3D', 'Dr2NetVideoViT', 'PlainVideoViT']

if find_spec('mmseg') is not None:  # the lean UPerNet head subclasses mmseg's UPerHead
    from .lean_head import LeanUPerHead
    __all__ += ['LeanUPerHead']
