"""The check that stops a reversible stage whose branches hold sharded FSDP2 parameters (an FSDP2 unit
inside the stage; why it cannot work and what to wrap instead: :mod:`dr2net_mm.core.fsdp`).
Kept apart from that module, which imports the stage, so that the stage can import the check."""
from torch import nn


def _dtensor_type():
    """torch's ``DTensor`` class, or None where this torch has none."""
    try:
        from torch.distributed.tensor import DTensor  # torch >= 2.5
    except ImportError:
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def check_gathered(stage: nn.Module) -> None:
    """Raise if a branch of ``stage`` (a ``ReversibleSequence``) would run with sharded (FSDP2
    ``DTensor``) parameters, i.e. an FSDP2 unit sits inside the stage (see :mod:`dr2net_mm.core.fsdp`).
    Costs one type check per parameter (about 0.2 ms for 48 branches of 6 parameters on a CPU)."""
    odd = [(i, p) for i, f in enumerate(stage.functions, 1) for m in f.modules()
           for p in m._parameters.values() if p is not None and type(p) is not nn.Parameter]
    dtensor = _dtensor_type() if odd else None
    sharded = [(i, p) for i, p in odd if dtensor is not None and isinstance(p, dtensor)]
    if not sharded:
        return
    i, param = sharded[0]
    function = stage.functions[i - 1]
    name = next((n for n, p in function.named_parameters() if p is param), '?')
    raise RuntimeError(
        f'{type(stage).__name__}: branch {i} ({type(function).__name__}) would run with the sharded '
        f'parameter {name!r} ({len(sharded)} sharded in all): an FSDP2 unit (fully_shard) sits inside '
        'this reversible stage, e.g. one per block or per branch. The stage calls its branches itself '
        '(in backward while it rebuilds its streams, piece by piece for planned branches), so such a '
        "unit's hooks never gather its parameters. Wrap whole stages instead: fully_shard each module "
        'that runs a stage (e.g. every Dr2NetSwinStage, or the backbone) and then the whole model; '
        'dr2net_mm.core.fsdp.fully_shard_stages(model) does this.')
