"""The memory report of any mm config: build it with random weights, train one synthetic batch, and say
what each part keeps for backward, where the step peaks (:mod:`.parts`) and the largest batch that fits
a budget. ``tools/memory_report.py`` is the command line; docs/memory_report.md explains the figures.

*Step memory* (what the budget is compared with) = parameters + gradient buffers + the step's peak
above what was live before it (activations and transients). Optimiser state is not included (AdamW
adds twice the trainable parameters' bytes).
"""
import math
import os
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .batches import detector_batch, segmentor_batch, synthetic_point_batch
from .measure import MB, _cpu_peak_bytes, _cuda_peak_bytes
from .parts import PartTracker, resolve_parts, step_timeline
from .variants import build_model, training_loss

__all__ = ['load_config', 'config_kind', 'make_batch', 'build', 'part_report', 'step_memory_mb',
           'largest_batch', 'BudgetError', 'markdown', 'plot']

KINDS = {'mmdet': 'detector', 'mmseg': 'segmentor', 'mmaction': 'recognizer'}
Size = Union[int, Tuple[int, int]]


class BudgetError(ValueError):
    """The budget is below the smallest batch's step memory."""


def load_config(path: str, options: Optional[dict] = None):
    """The config at ``path`` with ``options`` (``--cfg-options`` style: dotted keys) merged in."""
    from mmengine.config import Config
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config {path!r} not found: give the path of an mmdet / mmseg / '
                                'mmaction config file, such as configs/upernet_swin_t_ade20k.py')
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def config_kind(cfg) -> str:
    """'detector', 'segmentor', 'recognizer' or 'points': which synthetic batch the model trains on."""
    if cfg.model.get('type') == 'Pix4PointSegmentor':
        return 'points'
    scope = cfg.get('default_scope')
    if scope not in KINDS:
        raise ValueError(f'config {cfg.filename!r}: default_scope {scope!r} with model type '
                         f'{cfg.model.get("type")!r} is not a model the report can feed; it takes '
                         'mmdet, mmseg and mmaction configs (default_scope mmdet / mmseg / mmaction) '
                         'and Pix4Point segmentors')
    return KINDS[scope]


def _num_classes(model: nn.Module) -> int:
    """The first ``num_classes`` (an int) among the model's modules: the classes its labels take."""
    for module in model.modules():
        value = getattr(module, 'num_classes', None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f'{type(model).__name__} has no module with an int num_classes; the report '
                     'cannot make labels for it')


def make_batch(kind: str, model: nn.Module, size: Size, batch: int, frames: int = 16,
               points: int = 24000, seed: int = 0) -> dict:
    """A synthetic training batch of ``batch`` samples for a model of ``kind``: images of ``size``
    (int: square; (h, w)) with 3 boxes each (detector) or label maps (segmentor), clips of
    ``frames`` × ``size``² (recognizer) or crops of ``points`` points (points)."""
    if kind == 'detector':
        return detector_batch(batch, size, _num_classes(model), seed)
    if kind == 'points':
        return synthetic_point_batch(model, points, batch, seed)
    h, w = (size, size) if isinstance(size, int) else size
    if h != w:
        raise ValueError(f'size {h}x{w}: a {kind} takes one square size such as 512')
    if kind == 'segmentor':
        return segmentor_batch(batch, h, model.decode_head.num_classes, seed)
    from mmaction.structures import ActionDataSample
    gen = torch.Generator().manual_seed(seed)
    classes = _num_classes(model)
    return dict(inputs=[torch.randint(0, 256, (1, 3, frames, h, h), dtype=torch.uint8, generator=gen)
                        for _ in range(batch)],
                data_samples=[ActionDataSample().set_gt_label(i % classes) for i in range(batch)])


def build(cfg, kind: str, size: Size) -> nn.Module:
    """The model of ``cfg`` with random weights (:func:`.variants.build_model`); a segmentor's
    data preprocessor pads to ``size``² (mmseg's configs pad every input to the crop size)."""
    import copy
    cfg = copy.deepcopy(cfg)
    if kind == 'segmentor' and cfg.model.get('data_preprocessor', {}).get('size') is not None:
        cfg.model.data_preprocessor.size = (size, size) if isinstance(size, int) else tuple(size)
    return build_model(cfg, None if kind == 'points' else cfg.get('default_scope'))


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def part_report(model: nn.Module, batch: dict, device: torch.device,
                parts: Optional[Sequence[str]] = None) -> dict:
    """One training step of ``model`` on ``batch`` after a warm-up step (which allocates the
    gradient buffers): saved bytes by part, the peak and where it is, live bytes at the end of the
    forward and the largest live bytes while each part's forward / backward ran (MB). On CUDA also
    the allocator's peak of a plain step (``allocator_peak_mb``), the second measurement."""
    model.to(device)
    model.train()
    training_loss(model, batch).backward()
    params = list(model.parameters())
    tracker = PartTracker(model, resolve_parts(model, parts), params)

    def step(tr):
        with tr.forward():
            loss = training_loss(model, batch)
        tr.before_backward(loss)
        loss.backward()

    try:
        timeline = step_timeline(step, tracker, device.type)
        saved = tracker.saved_by_part()
    finally:
        tracker.remove()
    result = dict(
        saved_mb={part: value / MB for part, value in saved.items()},
        saved_total_mb=sum(saved.values()) / MB, peak_mb=timeline.peak / MB,
        peak_at=timeline.peak_at,
        end_of_forward_mb=(timeline.end_of_forward or 0) / MB,
        max_live_mb={label: value / MB for label, value in timeline.max_by_label.items()},
        params_mb=_bytes(params) / MB,
        grads_mb=_bytes(p for p in params if p.requires_grad) / MB)
    if device.type == 'cuda':
        result['allocator_peak_mb'] = _cuda_peak_bytes(
            lambda: training_loss(model, batch).backward(), device)[0] / MB
    return result


def step_memory_mb(model: nn.Module, batch: dict, device: torch.device) -> float:
    """Parameters + gradient buffers + the peak of one training step on ``batch`` (MB)."""
    params = list(model.parameters())
    fixed = _bytes(params) + _bytes(p for p in params if p.requires_grad)

    def step():
        training_loss(model, batch).backward()

    peak = _cuda_peak_bytes(step, device)[0] if device.type == 'cuda' else _cpu_peak_bytes(step)
    return (fixed + peak) / MB


def _smallest_batch(memory_at: Callable[[int], float]) -> Tuple[int, float]:
    """(1, its memory), or (2, ...) where one sample cannot train (BatchNorm over one value)."""
    try:
        return 1, memory_at(1)
    except ValueError as error:
        if 'more than 1 value per channel' not in str(error):
            raise
        return 2, memory_at(2)


def largest_batch(memory_at: Callable[[int], float], budget_mb: float, search: str = 'linear',
                  max_batch: int = 4096) -> dict:
    """The largest batch whose step memory ``memory_at(batch)`` (MB) fits ``budget_mb``.

    ``search='linear'`` (cheap, for CPUs): measure the smallest batch b₀ and 2b₀, extrapolate
    m(b) = m(b₀) + (b − b₀)·(m(2b₀) − m(b₀))/b₀ to the largest b with m(b) ≤ budget, measure that b,
    and while it does not fit, refit the line through it and step down. ``'bisect'``: double from
    b₀ until a batch does not fit, then bisect. Returns dict(batch, method, measured_mb)."""
    if search not in ('linear', 'bisect'):
        raise ValueError(f'search {search!r}: choose linear or bisect')
    measured: Dict[int, float] = {}

    def at(b: int) -> float:
        if b not in measured:
            measured[b] = memory_at(b)
        return measured[b]

    first, memory = _smallest_batch(memory_at)
    measured[first] = memory
    if memory > budget_mb:
        raise BudgetError(f'budget {budget_mb:.0f} MB is below the step memory of batch {first} '
                          f'({memory:.0f} MB): raise --budget, use a smaller --size or a leaner '
                          'variant')
    if search == 'bisect':
        low, high = first, 2 * first
        while high <= max_batch and at(high) <= budget_mb:
            low, high = high, 2 * high
        while high - low > 1 and low < max_batch:
            mid = (low + high) // 2
            low, high = (mid, high) if at(mid) <= budget_mb else (low, mid)
        method = f'doubling from {first}, then bisection'
        return dict(batch=low, method=method, measured_mb=measured)
    second = 2 * first
    guess = first
    if at(second) <= budget_mb:
        slope = (at(second) - memory) / first
        guess = max_batch if slope <= 0 else min(
            max_batch, first + math.floor((budget_mb - memory) / slope))
        guess = max(guess, second)
        while guess > second and at(guess) > budget_mb:
            slope = (at(guess) - memory) / (guess - first)
            guess = max(second, min(guess - 1, first + math.floor((budget_mb - memory) / slope)))
    else:  # between the two (only 3 when the smallest batch is 2)
        guess = next((b for b in range(second - 1, first, -1) if at(b) <= budget_mb), first)
    method = (f'linear through batches {first} and {second}, checked at {guess}'
              if guess > second else f'measured at batches {", ".join(map(str, sorted(measured)))}')
    return dict(batch=guess, method=method, measured_mb=measured)


def _parts_in_order(reports: Dict[str, dict]) -> list:
    parts = []
    for report in reports.values():
        parts += [p for p in report['saved_mb'] if p not in parts and p != 'other']
    return parts + ['other']


def markdown(reports: Dict[str, dict]) -> str:
    """Variants side by side: saved MB by part, totals, the peak and where it is, the resident
    peak when measured, the budget's batch when asked; then the largest live MB while each part's
    forward / backward ran."""
    names = list(reports)
    first = reports[names[0]]

    def row(label, cell):
        return f'| {label} | ' + ' | '.join(cell(reports[n]) for n in names) + ' |'

    def mb(key):
        return lambda r: f'{r[key]:.1f}' if r.get(key) is not None else '—'

    def second(r):
        value = r.get('rss_peak_mb', r.get('allocator_peak_mb'))
        return '—' if value is None else f'{value:.1f} ({value / r["peak_mb"]:.2f}×)'

    lines = ['| saved for backward (MB) | ' + ' | '.join(names) + ' |',
             '|---|' + '---:|' * len(names)]
    lines += [row(part, lambda r, p=part: f'{r["saved_mb"].get(p, 0.0):.1f}')
              for part in _parts_in_order(reports)]
    lines += [row('**total saved**', mb('saved_total_mb')),
              row('live at the end of the forward', mb('end_of_forward_mb')),
              row('**peak of the step** (profiler)', mb('peak_mb')),
              row('peak, second measurement (resident / allocator)', second),
              row('where the step peaks', lambda r: r['peak_at']),
              row('peak − saved (transient)', lambda r: f'{r["peak_mb"] - r["saved_total_mb"]:.1f}'),
              row('peak / first variant', lambda r: f'{r["peak_mb"] / first["peak_mb"]:.2f}'),
              row('parameters + gradients', lambda r: f'{r["params_mb"] + r["grads_mb"]:.1f}'),
              row('step memory (parameters + gradients + peak)',
                  lambda r: f'{r["params_mb"] + r["grads_mb"] + r["peak_mb"]:.1f}')]
    if any('budget' in r for r in reports.values()):
        lines.append(row('largest batch in the budget', lambda r: (
            f'{r["budget"]["batch"]} ({r["budget"]["method"]})' if 'budget' in r else '—')))
    labels = []
    for report in reports.values():
        labels += [k for k in report['max_live_mb'] if k not in labels]
    lines += ['', '| largest live MB while ... ran | ' + ' | '.join(names) + ' |',
              '|---|' + '---:|' * len(names)]
    lines += [row(label, lambda r, k=label: f'{r["max_live_mb"][k]:.1f}'
                  if k in r['max_live_mb'] else '—') for label in labels]
    return '\n'.join(lines)


def plot(reports: Dict[str, dict], path: str, title: str = '') -> None:
    """One stacked bar per variant: the saved MB of each part, then the transient up to the peak
    (hatched); the peak is labelled with where it is, a resident / allocator peak is a black tick."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(reports)
    parts = _parts_in_order(reports)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(names) + 3), 5.5))
    bottoms = [0.0] * len(names)
    colors = plt.get_cmap('tab20').colors
    for k, part in enumerate(parts):
        values = [reports[n]['saved_mb'].get(part, 0.0) for n in names]
        ax.bar(names, values, 0.6, bottom=bottoms, label=part, color=colors[k % len(colors)])
        bottoms = [b + v for b, v in zip(bottoms, values)]
    peaks = [reports[n]['peak_mb'] for n in names]
    ax.bar(names, [max(p - b, 0.0) for p, b in zip(peaks, bottoms)], 0.6, bottom=bottoms,
           fill=False, hatch='//', edgecolor='grey', label='transient at the peak')
    for x, name in enumerate(names):
        ax.annotate(f'peak {peaks[x]:.0f} MB\n{reports[name]["peak_at"]}', (x, peaks[x]),
                    xytext=(0, 4), textcoords='offset points', ha='center', fontsize=7)
        second = reports[name].get('rss_peak_mb', reports[name].get('allocator_peak_mb'))
        if second is not None:
            ax.plot([x - 0.35, x + 0.35], [second, second], color='black', lw=1.5,
                    label='second measurement' if x == 0 else None)
    ax.set_ylabel('MB')
    ax.set_title(title or 'saved for backward by part, and the step peak', fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
