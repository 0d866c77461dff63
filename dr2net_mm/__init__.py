"""dr2net_mm: Dynamic Reversible Dual-Residual Networks (Dr²Net) for OpenMMLab.

``import dr2net_mm`` registers every model and hook of the package into MMEngine's root
registries, so mmdet, mmseg and plain MMEngine configs resolve them by name::

    custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

The reversible engine (:mod:`dr2net_mm.core`) and the timm conversion
(:mod:`dr2net_mm.timm_models`) are pure PyTorch: without MMEngine installed, ``import dr2net_mm``
registers nothing and those two still work.
"""
from .version import __version__

try:
    import mmengine  # noqa: F401
except ModuleNotFoundError as error:
    if error.name != 'mmengine':
        raise
    mmengine = None
if mmengine is not None:
    from . import models  # noqa: F401  (registers backbones)
    from . import engine  # noqa: F401  (registers hooks)
    from . import points  # noqa: F401  (registers the point-cloud dataset, transforms, models, metric)

__all__ = ['__version__']
