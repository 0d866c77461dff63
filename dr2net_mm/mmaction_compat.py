"""Makes ``import mmaction.models`` work with mmaction2 1.2.0 as published on PyPI.

Contract. mmaction2 1.2.0's wheel lacks the folder ``mmaction/models/localizers/drn`` (a known
upstream packaging defect), so ``mmaction/models/localizers/__init__.py``'s
``from .drn.drn import DRN`` fails and with it ``import mmaction.models``: no mmaction2 model can be
built. :func:`install` appends a finder to the *end* of ``sys.meta_path`` that supplies exactly the
two missing modules, ``mmaction.models.localizers.drn`` and ``mmaction.models.localizers.drn.drn``,
and only when no other finder does: a fixed mmaction2 (a source install, a later wheel) is imported
as it is. The supplied ``DRN`` is a placeholder that raises, naming the cause and the fix, when a
config builds it; every other model of mmaction2 is untouched. Nothing in site-packages is edited.

mmaction2's other defect, an undeclared ``importlib_metadata`` import, is a missing dependency, so it
is declared where the rest of the video stack is (the ``video`` extra and the constraints).

``import dr2net_mm`` calls :func:`install` when mmaction2 is installed; it must run before
``mmaction.models`` is first imported (configs import ``dr2net_mm`` through ``custom_imports``,
before the runner builds any model).
"""
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__all__ = ['MISSING', 'install', 'installed']

PACKAGE = 'mmaction.models.localizers.drn'
MISSING = (PACKAGE, PACKAGE + '.drn')


class DRN:
    """Stands in for mmaction2's DRN localizer, whose code the mmaction2 1.2.0 wheel does not ship."""

    def __init__(self, *args, **kwargs):
        raise ImportError(
            "mmaction2's DRN localizer is not available: the mmaction2 1.2.0 wheel on PyPI lacks "
            "mmaction/models/localizers/drn (dr2net_mm supplies an empty module so that the rest of "
            'mmaction.models imports). To use DRN, install mmaction2 from its source repository.')


class _MissingDRN(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds only the two module names of :data:`MISSING`, after every other finder."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MISSING:
            return None
        is_package = fullname == PACKAGE
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = 'Placeholder supplied by dr2net_mm.mmaction_compat (see there).'
        if module.__name__ == PACKAGE:
            module.__path__ = []  # a package without files: only ``.drn`` below it, from this finder
        else:
            module.DRN = DRN


def installed() -> bool:
    """Whether the finder is on ``sys.meta_path``."""
    return any(isinstance(finder, _MissingDRN) for finder in sys.meta_path)


def install() -> None:
    """Append the finder to ``sys.meta_path`` (once; later calls do nothing)."""
    if not installed():
        sys.meta_path.append(_MissingDRN())
