"""Replaying random draws (dropout, drop path) when a module is recomputed in backward.

The forward of a reversible stage records the RNG state just before each module runs; the backward
recomputation of that module restores it, so it draws the same masks, and then puts back whatever state
the global generators had, so the training run's random stream continues untouched (the same approach
as ``torch.utils.checkpoint``; nothing is ever reseeded).
"""
from contextlib import contextmanager
from typing import Iterator, List, NamedTuple, Optional

import torch


class RNGState(NamedTuple):
    cpu: torch.Tensor
    device_type: Optional[str]  # an accelerator whose generator is recorded too ('cuda'), or None
    device_index: Optional[int]
    device_state: Optional[torch.Tensor]


def capture_rng_state(device: torch.device) -> RNGState:
    """The CPU generator's state, plus the accelerator generator's for tensors on ``device``."""
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return RNGState(torch.get_rng_state(), 'cuda', index, torch.cuda.get_rng_state(index))
    return RNGState(torch.get_rng_state(), None, None, None)


@contextmanager
def replay_rng_state(state: Optional[RNGState]) -> Iterator[None]:
    """Run the block with ``state`` as the current RNG state; restore the previous state after."""
    if state is None:
        yield
        return
    devices: List[int] = [state.device_index] if state.device_type == 'cuda' else []
    with torch.random.fork_rng(devices=devices, device_type=state.device_type or 'cuda'):
        torch.set_rng_state(state.cpu)
        if state.device_type == 'cuda':
            torch.cuda.set_rng_state(state.device_state, state.device_index)
        yield
