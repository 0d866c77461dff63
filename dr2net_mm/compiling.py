"""MMEngine's ``compile=True`` with Dr²Net configs.

``Runner`` compiles the model's ``train_step`` (forward, loss, backward and optimizer step) with
``torch.compile``. A reversible stage's chain and its backward run eagerly inside it (a graph break,
see ``ReversibleSequence._reversible_forward``); the layers around them are compiled. Measured on a
tiny Dr2NetSwin classifier: the losses and weights of eager execution (tests/test_compile.py).

One obstacle is MMEngine's, not the stages': from a config file with ``paramwise_cfg`` (every mmdet
detector's), MMEngine builds every optimizer param group as an ``mmengine.config.ConfigDict``, and
``torch.compile`` (dynamo, torch 2.14) fails on such groups at the first optimizer step
(``InternalTorchDynamoError: AttributeError: 'UserDefinedDictVariable' object has no attribute
'items'``), with or without Dr²Net. ``import dr2net_mm`` calls :func:`install`: before ``Runner``
compiles, it turns those groups into plain dicts (same keys and values).

torch 2.1 (the oldest declared) cannot compile a Dr²Net backbone: its dynamo fails on the
``torch.utils.checkpoint`` of a module in the step (``InternalTorchDynamoError: 'NNModuleVariable'
object has no attribute 'get_name'``, at Dr2NetSwin's patch merging), so there ``compile=True`` is
refused with a message (:func:`compile_refusal`). Versions between 2.1 and 2.14 are untested.
"""
import functools
from typing import Any, Optional

import torch
from mmengine.runner import Runner

from .core import reversible_stages

VERIFIED_TORCH = '2.14'


def compile_refusal(model: Any, torch_version: str) -> Optional[str]:
    """Why ``compile=True`` cannot train ``model`` under ``torch_version``, or None."""
    if not reversible_stages(model) or torch.torch_version.TorchVersion(torch_version) >= '2.2':
        return None
    return (f'compile=True: torch {torch_version} cannot compile a model with reversible Dr²Net '
            'stages (its dynamo fails on torch.utils.checkpoint of a module inside the training step). '
            f'Remove compile from the config (eager training is unaffected), or use a newer torch '
            f'(compile=True is verified with torch {VERIFIED_TORCH}).')


def plain_param_groups(optim_wrapper: Any) -> int:
    """Replace every param group of ``optim_wrapper``'s optimizers (an ``OptimWrapper`` or an
    ``OptimWrapperDict``) that is a dict subclass by a plain dict; return how many were replaced."""
    wrappers = optim_wrapper.values() if hasattr(optim_wrapper, 'optim_wrappers') else [optim_wrapper]
    replaced = 0
    for wrapper in wrappers:
        groups = getattr(getattr(wrapper, 'optimizer', None), 'param_groups', [])
        for i, group in enumerate(groups):
            if type(group) is not dict:
                groups[i] = dict(group)
                replaced += 1
    return replaced


def install() -> None:
    """Make ``Runner._maybe_compile`` check :func:`compile_refusal` and call
    :func:`plain_param_groups` first when ``compile`` is set (idempotent)."""
    compile_step = Runner._maybe_compile
    if getattr(compile_step, '_dr2net_plain_groups', False):
        return

    @functools.wraps(compile_step)
    def _maybe_compile(self, target: str) -> None:
        if self.cfg.get('compile', None):
            refusal = compile_refusal(self.model, torch.__version__)
            if refusal:
                raise RuntimeError(refusal)
            if not isinstance(self.optim_wrapper, dict):
                plain_param_groups(self.optim_wrapper)
        compile_step(self, target)

    _maybe_compile._dr2net_plain_groups = True
    Runner._maybe_compile = _maybe_compile


install()
