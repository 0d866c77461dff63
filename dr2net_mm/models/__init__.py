"""Backbones registered into MMEngine's root MODELS registry."""
from .backbone import PretrainedMismatchError
from .plain_vit import PlainViT
from .swin import Dr2NetSwin
from .vit import Dr2NetViT

__all__ = ['Dr2NetSwin', 'Dr2NetViT', 'PlainViT', 'PretrainedMismatchError']
