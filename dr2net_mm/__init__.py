"""dr2net_mm: Dynamic Reversible Dual-Residual Networks (Dr²Net) for OpenMMLab.

``import dr2net_mm`` registers every model and hook of the package into MMEngine's root
registries, so mmdet, mmseg and plain MMEngine configs resolve them by name::

    custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

The reversible engine (:mod:`dr2net_mm.core`) and the timm conversion
(:mod:`dr2net_mm.timm_models`) are pure PyTorch. Python runs this file before any submodule, also
for ``import dr2net_mm.core``; so the OpenMMLab layer is imported only where MMEngine is installed.
There it is imported at once, and a missing mmdet or mmcv is reported as the import error it is.
"""
from importlib.util import find_spec

from .version import __version__

if find_spec('mmaction') is not None:
    # mmaction2 1.2.0's wheel lacks a folder that `import mmaction.models` needs (see there)
    from .mmaction_compat import install as _install_mmaction_compat
    _install_mmaction_compat()

if find_spec('mmengine') is not None:
    from . import models  # noqa: F401  (registers backbones)
    from . import engine  # noqa: F401  (registers hooks)
    from . import points  # noqa: F401  (registers the point-cloud dataset, transforms, models, metric)
    from . import distributed  # noqa: F401  (FSDP1/DeepSpeed wrappers warn: not verified)
    from . import compiling  # noqa: F401  (compile=True: plain optimizer param groups)
    from .mmcv_ops import apply_env_fallback

    # DR2NET_MMCV_PYTORCH_FALLBACK=1: mmcv's pure-PyTorch deformable attention on CUDA
    apply_env_fallback()

__all__ = ['__version__']
