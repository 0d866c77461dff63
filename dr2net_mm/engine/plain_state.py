"""Checkpoint contents that torch's weights-only loader accepts, and back: :func:`to_plain`, :func:`from_plain`.

``torch.load`` reads with ``weights_only=True`` by default since torch 2.6 (mmdet's and mmseg's own
``tools/test.py`` included); it refuses numpy arrays and MMEngine's ``HistoryBuffer`` objects,
which every MMEngine checkpoint holds (the NumPy random state, the message hub's logged scalars).
:func:`to_plain` replaces them by small dicts of tensors and plain values that it marks; :func:`from_plain`
turns those back into equal objects (same dtype, same bits), so a resumed run continues exactly.

* numpy array ``a`` → ``{MARK: 'ndarray', 'dtype': a.dtype.str, 'data': tensor}``; unsigned dtypes that torch
  2.1 lacks (uint16/32/64) travel as signed integers of the same width, bit for bit;
* numpy scalar → the same with ``MARK: 'numpy_scalar'``;
* ``HistoryBuffer`` → ``{MARK: 'HistoryBuffer', 'log': ..., 'count': ..., 'max_length': n}``.

Dicts, lists and tuples are rebuilt only where something inside changed: everything else (the model
and optimizer state dicts, with their ``_metadata``) is passed through as the same object.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['MARK', 'to_plain', 'from_plain']

MARK = '__dr2net_plain__'
# numpy dtypes torch.from_numpy takes on every supported torch (2.1 included)
TORCH_DTYPES = ('bool', 'uint8', 'int8', 'int16', 'int32', 'int64', 'float16', 'float32', 'float64',
                'complex64', 'complex128')


def _array_to_plain(value):
    array = np.asarray(value)
    dtype = array.dtype
    if not dtype.isnative or (dtype.name not in TORCH_DTYPES and dtype.kind != 'u'):
        return value  # strings, objects, float128...: left as they are
    array = np.array(array, copy=True, order='C')
    if dtype.name not in TORCH_DTYPES:
        array = array.view(f'i{dtype.itemsize}')  # uint16/32/64 as int16/32/64, same bits
    kind = 'ndarray' if isinstance(value, np.ndarray) else 'numpy_scalar'
    return {MARK: kind, 'dtype': dtype.str, 'data': torch.from_numpy(array)}


def _array_from_plain(plain: dict):
    array = plain['data'].cpu().numpy().copy().view(np.dtype(plain['dtype']))
    return array if plain[MARK] == 'ndarray' else array[()]


def _rebuild(container, items):
    """``container`` with ``items`` (index/key → new value) put in, as a new object of its type;
    ``container`` itself when nothing changed."""
    if not items:
        return container
    if isinstance(container, dict):
        new = container.copy()
        new.update(items)
        return new
    values = list(container)
    for index, value in items.items():
        values[index] = value
    return values if isinstance(container, list) else tuple(values)


def _map(obj, convert):
    """Apply ``convert`` to every value inside dicts, lists and tuples (plain ones, not subclasses
    such as named tuples, except dict subclasses), rebuilding only what changed."""
    if isinstance(obj, dict):
        pairs = obj.items()
    elif type(obj) in (list, tuple):
        pairs = enumerate(obj)
    else:
        return obj
    changed = {}
    for key, value in pairs:
        new = convert(value)
        if new is not value:
            changed[key] = new
    return _rebuild(obj, changed)


def to_plain(obj):
    """``obj`` with numpy values and ``HistoryBuffer`` objects replaced by marked plain dicts."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {MARK: 'HistoryBuffer', 'log': to_plain(log), 'count': to_plain(count),
                'max_length': obj.max_length}
    if isinstance(obj, (np.ndarray, np.generic)):
        return _array_to_plain(obj)
    return _map(obj, to_plain)


def from_plain(obj):
    """The inverse of :func:`to_plain` (values it did not mark are returned as they are)."""
    kind = obj.get(MARK) if isinstance(obj, dict) else None
    if kind in ('ndarray', 'numpy_scalar'):
        return _array_from_plain(obj)
    if kind == 'HistoryBuffer':
        return HistoryBuffer(from_plain(obj['log']), from_plain(obj['count']), obj['max_length'])
    return _map(obj, from_plain)
