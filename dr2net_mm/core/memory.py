"""Counting the bytes a forward pass saves for backward (activations, each storage once)."""
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator

import torch
from torch import Tensor


class SavedBytes:
    """Result of :func:`count_saved_bytes`: ``total`` bytes in ``storages`` distinct storages."""

    def __init__(self, excluded: Iterable[Tensor]):
        self._excluded = {t.untyped_storage().data_ptr() for t in excluded}
        self._storages: Dict[int, int] = {}

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._excluded:
            self._storages[ptr] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self._storages.values())

    @property
    def storages(self) -> int:
        return len(self._storages)


@contextmanager
def count_saved_bytes(exclude: Iterable[Tensor] = ()) -> Iterator[SavedBytes]:
    """Count every storage saved for backward inside the block, once, skipping ``exclude``'s storages
    (pass ``model.parameters()`` to count activations only)::

        with count_saved_bytes(model.parameters()) as saved:
            loss = model(x).sum()
        print(saved.total)

    Saved tensors stay alive until backward, so two saved storages never share an address.
    """
    counter = SavedBytes(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter._pack, lambda t: t):
        yield counter
