"""A warning when MMEngine wraps a model with reversible stages in a wrapper not verified with them.

Verified (CPU, 2 gloo processes, gradients equal to one process): ``MMDistributedDataParallel``
(DDP, tests/test_alpha_beta_hook.py) and torch's FSDP2 ``fully_shard`` with units that hold whole
stages (:mod:`dr2net_mm.core.fsdp`, tests/test_fsdp.py). Not verified, because both need a GPU:

* FSDP1, ``MMFullyShardedDataParallel`` (``FSDPStrategy``, or ``model_wrapper_cfg``): it flattens the
  parameters of each unit into one and reduces its gradient from a hook on that flat parameter;
  the reversible backward recomputes each branch and back-propagates through it on its own, so that
  hook may fire once per branch instead of once per unit;
* DeepSpeed, ``MMDeepSpeedEngineWrapper`` (``DeepSpeedStrategy``): ZeRO-3 gathers parameters in
  module forward hooks, which the engine bypasses as it does FSDP2 units inside a stage; ZeRO-1/2
  reduce gradients from per-parameter hooks while the engine adds gradients straight into ``.grad``.

``import dr2net_mm`` calls :func:`install`: each of those wrappers' ``__init__`` first calls
:func:`warn_unverified` (the work-dir log gets the warning), then wraps as before.
"""
import functools
import logging
from typing import Any, Callable, Optional

from mmengine.logging import print_log
from torch import nn

from .core import reversible_stages

VERIFIED = ('Verified (CPU, 2 gloo processes, gradients equal to one process): DDP '
            '(MMDistributedDataParallel) and FSDP2 with whole reversible stages per unit '
            '(dr2net_mm.core.fsdp.fully_shard_stages).')
NOT_VERIFIED = {
    'MMFullyShardedDataParallel': (
        'FSDP1 (MMFullyShardedDataParallel, FSDPStrategy)',
        'it reduces each unit\'s flat-parameter gradient from a hook that the reversible backward, '
        'which recomputes every branch on its own, may fire once per branch'),
    'MMDeepSpeedEngineWrapper': (
        'DeepSpeed (DeepSpeedStrategy)',
        'ZeRO-3 gathers parameters in module forward hooks that the reversible engine bypasses, and '
        'ZeRO-1/2 reduce from gradient hooks while the engine adds gradients straight into .grad'),
}


def warn_unverified(wrapper: str, model: Any) -> Optional[str]:
    """Log (WARNING) and return what is verified and what is not when ``wrapper`` (a key of
    :data:`NOT_VERIFIED`) wraps ``model`` holding reversible stages; None for other models."""
    stages = reversible_stages(model) if isinstance(model, nn.Module) else []
    if not stages:
        return None
    name, risk = NOT_VERIFIED[wrapper]
    message = (f'dr2net_mm: {name} wraps {type(model).__name__} with {len(stages)} reversible '
               f'stage(s). Not verified: it needs a GPU and has not been run with reversible stages '
               f'({risk}). {VERIFIED} Before a long run, compare the first iterations\' loss and '
               'grad_norm with a DDP run of the same config, or use DDP / FSDP2.')
    print_log(message, logger='current', level=logging.WARNING)
    return message


def _warn_first(cls: type, wrapper: str, model_of: Callable[..., Any]) -> None:
    init = cls.__init__
    if getattr(init, '_dr2net_warns', False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        warn_unverified(wrapper, model_of(*args, **kwargs))
        init(self, *args, **kwargs)

    __init__._dr2net_warns = True
    cls.__init__ = __init__


def install() -> None:
    """Make MMEngine's FSDP1 and DeepSpeed wrappers warn first (idempotent; a wrapper this MMEngine
    or torch lacks is left out)."""
    try:
        from mmengine.model import MMFullyShardedDataParallel
    except ImportError:  # torch without FSDP
        pass
    else:
        _warn_first(MMFullyShardedDataParallel, 'MMFullyShardedDataParallel',
                    lambda module=None, *args, **kwargs: module)
    try:
        from mmengine._strategy.deepspeed import MMDeepSpeedEngineWrapper
    except ImportError:  # an MMEngine without strategies
        pass
    else:
        _warn_first(MMDeepSpeedEngineWrapper, 'MMDeepSpeedEngineWrapper',
                    lambda *args, model=None, **kwargs: getattr(model, 'module', model))


install()
