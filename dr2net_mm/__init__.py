"""dr2net_mm: Dynamic Reversible Dual-Residual Networks (Dr²Net) for OpenMMLab.

``import dr2net_mm`` registers every model and hook of the package into MMEngine's root
registries, so mmdet, mmseg and plain MMEngine configs resolve them by name::

    custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

The reversible engine itself (:mod:`dr2net_mm.core`) is pure PyTorch.
"""
from .version import __version__
from . import models  # noqa: F401  (registers backbones)
from . import engine  # noqa: F401  (registers hooks)
from . import points  # noqa: F401  (registers the point-cloud dataset, transforms, models, metric)
from .mmcv_ops import apply_env_fallback

apply_env_fallback()  # DR2NET_MMCV_PYTORCH_FALLBACK=1: mmcv's pure-PyTorch deformable attention on CUDA

__all__ = ['__version__']
