"""A training step's memory by model part: what each part keeps for backward and where the step peaks.

A *part* is a set of submodules with a name. By default (:func:`default_parts`) the parts are the
model's direct children (``backbone``, ``neck``, ``encoder``, ``decoder``, ``bbox_head``,
``decode_head``, ``auxiliary_head``, ``data_preprocessor``, ...) and ``losses``: every submodule whose
attribute name starts with ``loss`` (``loss_decode``, ``loss_cls``, ...). Whatever runs in no part is
``other``. While a part's ``forward`` or ``loss`` (mm heads train through ``loss``) runs it is the
*current* part; nested parts: the innermost wins.

* **saved bytes** of a part: every storage autograd saves for backward during the forward
  (``saved_tensors_hooks``; parameters excluded), counted once, for the part current when it was first
  saved. So Σ over parts = the step's saved bytes (:func:`dr2net_mm.core.count_saved_bytes`).
* **timeline**: the step's allocation events (``torch.profiler`` memory events, CPU or CUDA) in time
  order, each labelled with what ran: ``forward:PART`` (the part's methods wrapped), ``end of forward``
  (the loss computed, backward not started) or ``backward:PART`` (a pre-hook on every autograd node;
  a node belongs to the part current when the forward created it, found by its sequence number).
  The labels are profiler ranges, on the allocation events' clock.
* **peak**: the largest live bytes over the timeline, above those live when the step began; its
  label says where the step peaks. Recomputation inside backward (checkpointing, reversible stages)
  runs inside the backward of the node that needs it, so it counts for that node's part.
"""
import bisect
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .measure import profiled_events

__all__ = ['default_parts', 'resolve_parts', 'PartTracker', 'Timeline', 'step_timeline']

MARK = 'dr2net_mm.parts:'
OTHER = 'other'
LOSSES = 'losses'
END_OF_FORWARD = 'end of forward'
METHODS = ('forward', 'loss')  # what runs as the part: mm heads train through loss(), not __call__


def _loss_modules(model: nn.Module) -> List[nn.Module]:
    """Submodules whose attribute name starts with ``loss`` (outermost only)."""
    found = []
    for name, module in model.named_modules():
        if name and name.rsplit('.', 1)[-1].startswith('loss') and not any(
                name.startswith(prefix + '.') for prefix, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def _members(module: nn.Module) -> List[nn.Module]:
    """What runs as ``module``: itself, or for a container without a forward (ModuleList,
    ModuleDict) its children."""
    return list(module.children()) if type(module).forward is nn.Module.forward else [module]


def default_parts(model: nn.Module) -> Dict[str, List[nn.Module]]:
    """The model's direct children by name, plus ``losses`` (see the module docstring)."""
    parts = {name: _members(child) for name, child in model.named_children()
             if not name.startswith('loss')}
    losses = _loss_modules(model)
    if losses:
        parts[LOSSES] = losses
    return parts


def resolve_parts(model: nn.Module, names: Optional[Sequence[str]] = None) -> Dict[str, List[nn.Module]]:
    """Parts by name: :func:`default_parts` plus ``names`` (dotted submodule paths such as
    ``decode_head.fpn_bottleneck``, or ``losses``), each a part of its own."""
    parts = default_parts(model)
    modules = dict(model.named_modules())
    for name in names or ():
        if name in parts:
            continue
        if name not in modules or not name:
            example = next((n for n in modules if '.' in n), 'backbone')
            raise ValueError(
                f'unknown part {name!r}: {type(model).__name__} has no submodule of that name. Name '
                f'one of its parts ({", ".join(parts)}) or a dotted submodule path such as '
                f'{example!r} (print(model) lists them)')
        parts[name] = _members(modules[name])
    return parts


class PartTracker:
    """Which part runs now, in the forward (wrapped methods) and in the backward (node pre-hooks),
    and the bytes each part saves for backward. Use :meth:`forward` around the forward and call
    :meth:`before_backward` with the loss before ``loss.backward()``; :meth:`remove` when done."""

    def __init__(self, model: nn.Module, parts: Dict[str, List[nn.Module]],
                 exclude: Sequence[Tensor] = ()):
        self.parts = list(parts)
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._stack = [OTHER]
        self._changes: List[tuple] = []  # (first node sequence number, part), in forward order
        self._forward = False
        self._label = None
        self.saved: Dict[int, tuple] = {}  # storage address -> (bytes, part)
        self._wrapped: List[tuple] = []  # (module, method name, what the instance had before)
        for name, modules in parts.items():
            for module in modules:
                for method in METHODS:
                    if callable(getattr(type(module), method, None)):
                        self._wrap(module, method, name)

    def _wrap(self, module: nn.Module, method: str, name: str) -> None:
        """Make ``module.method`` run as part ``name``. An instance attribute, not a forward hook:
        mm heads call ``self.forward`` and ``self.loss`` directly, where hooks do not fire."""
        original = getattr(module, method)

        def run(*args, **kwargs):
            self._enter(name)
            try:
                return original(*args, **kwargs)
            finally:
                self._leave()

        self._wrapped.append((module, method, module.__dict__.get(method)))
        setattr(module, method, run)

    def _mark(self, label: str) -> None:
        if label != self._label:
            self._label = label
            with torch.profiler.record_function(MARK + label):
                pass

    def _changed(self) -> None:
        part = self._stack[-1]
        self._changes.append((torch.autograd._get_sequence_nr(), part))
        self._mark(f'forward:{part}')

    def _enter(self, name: str) -> None:
        if self._forward:  # (not while backward recomputes a forward)
            self._stack.append(name)
            if name != self._stack[-2]:
                self._changed()

    def _leave(self) -> None:
        if self._forward and len(self._stack) > 1:
            name = self._stack.pop()
            if name != self._stack[-1]:
                self._changed()

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._excluded and ptr not in self.saved:
            self.saved[ptr] = (storage.nbytes(), self._stack[-1])
        return tensor

    @contextmanager
    def forward(self) -> Iterator['PartTracker']:
        """Track the forward run inside: part changes, node sequence numbers, saved storages."""
        self._stack, self._changes, self.saved, self._label = [OTHER], [], {}, None
        self._forward = True
        self._changed()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            self._forward = False
            self._mark(END_OF_FORWARD)

    def part_of(self, node, _starts: Optional[List[int]] = None) -> str:
        """The part current when the forward created autograd node ``node``."""
        starts = _starts if _starts is not None else [seq for seq, _ in self._changes]
        index = bisect.bisect_right(starts, node._sequence_nr()) - 1
        return self._changes[index][1] if index >= 0 else OTHER

    def before_backward(self, loss: Tensor) -> None:
        """Put a pre-hook on every node of ``loss``'s graph that labels its backward's part."""
        starts = [seq for seq, _ in self._changes]
        seen, todo = set(), [loss.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            todo.extend(fn for fn, _ in node.next_functions)
            if node.name().endswith('AccumulateGrad'):
                continue
            label = f'backward:{self.part_of(node, starts)}'
            node.register_prehook(lambda grads, label=label: self._mark(label))

    def saved_by_part(self) -> Dict[str, int]:
        """Bytes saved for backward by each part (every part listed, ``other`` last)."""
        totals = {name: 0 for name in self.parts + [OTHER]}
        for nbytes, part in self.saved.values():
            totals[part] += nbytes
        return totals

    def remove(self) -> None:
        """Restore the wrapped methods."""
        for module, method, before in reversed(self._wrapped):
            if before is None:
                delattr(module, method)
            else:
                setattr(module, method, before)
        self._wrapped = []


class Timeline:
    """Live bytes over a step's allocation events, by label (see the module docstring)."""

    def __init__(self, events, device_type: str = 'cpu'):
        kind = getattr(torch.autograd.DeviceType, device_type.upper())
        marks = [(e.start_ns(), 0, e.name()[len(MARK):]) for e in events
                 if e.name().startswith(MARK)]
        allocations = [(e.start_ns(), 1, e.nbytes()) for e in events
                       if e.name() == '[memory]' and e.device_type() == kind]
        live = 0
        label = 'before the step'
        self.peak, self.peak_at = 0, label
        self.max_by_label: Dict[str, int] = {}  # label -> largest live bytes while it ran
        self.end_of_forward: Optional[int] = None  # live bytes when the forward ended
        for _, is_allocation, value in sorted(marks + allocations):
            if not is_allocation:
                label = value
                if label == END_OF_FORWARD:
                    self.end_of_forward = live
                self.max_by_label[label] = max(self.max_by_label.get(label, live), live)
                continue
            live += value
            self.max_by_label[label] = max(self.max_by_label.get(label, live), live)
            if live > self.peak:
                self.peak, self.peak_at = live, label


def step_timeline(step: Callable[[PartTracker], None], tracker: PartTracker,
                  device_type: str = 'cpu') -> Timeline:
    """Profile one ``step(tracker)`` (which must use ``tracker.forward`` and
    ``tracker.before_backward``) and return its :class:`Timeline`."""
    return Timeline(profiled_events(lambda: step(tracker), cuda=device_type == 'cuda'), device_type)
