"""FSDP2 (torch's ``fully_shard``) with reversible stages: which units work, and a check for the rest.

FSDP2 keeps each unit's parameters sharded (as ``DTensor``) and gathers them around the unit's own
calls: in a pre-hook of the unit's ``forward``, again in a pre-backward hook on the unit's outputs,
and reduces their gradients once the gradient reaches the unit's inputs. A reversible stage calls its
branches ``F_i`` itself: in the forward inside one autograd node per branch, in backward while it
rebuilds the streams (Eq. 2) and recomputes ``F_i``, and for a branch with a ``plan`` piece by piece
(``plan.body``), not through the branch's ``forward``. The streams pass between the branches outside
the autograd graph, so no tensor hook can mark where one block ends. Hence:

* a unit that contains whole stages (the whole model, the backbone, a module whose ``forward`` runs
  one stage, e.g. ``Dr2NetSwinStage``) works: its parameters are gathered before the stage starts and
  in its backward, the engine adds their gradients into the gathered parameters' ``.grad``, and FSDP2
  reduces them when the gradient reaches the unit's inputs (tests/test_fsdp.py: equal to one process);
* a unit inside a stage (one per transformer block, per branch, per layer of a branch) does not: the
  stage would run with sharded parameters. :func:`check_gathered` (called by every stage's forward)
  stops such a run with a message saying what to wrap instead.

:func:`stage_units` lists the smallest modules that contain whole stages, :func:`fully_shard_stages`
applies ``fully_shard`` to them and to the model.
"""
from typing import Any, List

import torch
from torch import nn

from .fsdp_check import check_gathered
from .reversible import reversible_stages

__all__ = ['check_gathered', 'stage_units', 'fully_shard_api', 'fully_shard_stages']


def stage_units(model: nn.Module) -> List[nn.Module]:
    """For every reversible stage in ``model``, the smallest submodule of ``model`` with a ``forward``
    that holds the stage and every parameter of its branches (deduplicated, deepest first): the FSDP2
    units that work, provided that module's ``forward`` is what runs the stage (true of every
    backbone of this package)."""
    paths = {id(m): name for name, m in model.named_modules()}
    units = {}
    for stage in reversible_stages(model):
        owners = [stage] + [m for f in stage.functions for m in f.modules()
                            if any(p is not None for p in m._parameters.values())]
        missing = [type(m).__name__ for m in owners if id(m) not in paths]
        if missing:
            raise ValueError(f'{type(stage).__name__}: modules {missing} of its branches are not '
                             f'submodules of the given {type(model).__name__}; pass the model that '
                             'owns them')
        split = [paths[id(m)].split('.') if paths[id(m)] else [] for m in owners]
        common = []
        for parts in zip(*split):
            if any(p != parts[0] for p in parts):
                break
            common.append(parts[0])
        while common and type(model.get_submodule('.'.join(common))).forward is nn.Module.forward:
            common.pop()  # a container without forward (ModuleList): its hooks would never run
        units['.'.join(common)] = model.get_submodule('.'.join(common))
    return [units[k] for k in sorted(units, key=lambda k: -len(k.split('.')) if k else 0)]


def fully_shard_api() -> Any:
    """torch's FSDP2 ``fully_shard`` (public from torch 2.6, under ``_composable`` from 2.4)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise ImportError(f'FSDP2 (fully_shard) needs torch >= 2.4, this is {torch.__version__}; '
                              'use DistributedDataParallel') from None
    return fully_shard


def fully_shard_stages(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``fully_shard`` every :func:`stage_units` unit (deepest first), then ``model``; ``kwargs`` go to
    every call (e.g. ``mesh``, ``mp_policy``). Returns ``model`` (now an FSDP2 module)."""
    fully_shard = fully_shard_api()
    for unit in stage_units(model):
        if unit is not model:
            fully_shard(unit, **kwargs)
    return fully_shard(model, **kwargs)
