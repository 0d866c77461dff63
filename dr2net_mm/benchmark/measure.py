"""Memory and time of one training step, measured the same way for every variant of a model.

Per variant (a constructor for a model in train mode plus an input and a loss):

* ``saved_mb``: bytes saved for backward by the forward (activations only: parameters excluded,
  each storage counted once; :func:`dr2net_mm.core.count_saved_bytes`);
* ``peak_mb``: peak memory of a whole training step (forward + backward, including the transient
  recomputation of reversible stages) above what was allocated before it. Gradient buffers already
  exist (a warm-up step allocated them), so this is activations plus transients. CUDA:
  ``max_memory_allocated`` after ``reset_peak_memory_stats``; CPU: the peak of live bytes from
  ``torch.profiler``'s allocation events; the median over ``iters`` steps. A second, independent
  figure, the process's resident high-water mark, comes from :mod:`.rss` (``rss_peak_mb``, filled in
  by ``tools/benchmark.py``, one fresh process per variant);
* CUDA only, absolute: ``cuda_max_allocated_mb`` and ``cuda_max_reserved_mb``, the largest
  ``max_memory_allocated`` / ``max_memory_reserved`` of those steps (parameters, gradients and the
  caching allocator's reserve included: what the device must hold);
* ``step_ms``: median wall time of a training step over ``iters`` steps after ``warmup`` steps.

``compare`` runs variants one after another in one process (so ratios hold on a noisy machine) and
adds ratios to the variants named ``conventional``, ``checkpointing`` and ``cp_all`` (a detector's
all-checkpointing baseline) when present. The variants themselves are built in
:mod:`dr2net_mm.benchmark.variants`.
"""
import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..core import count_saved_bytes

MB = 2.0**20
# the variants others are compared with, when present
PEERS = ('conventional', 'checkpointing', 'cp_all')


@dataclass
class Variant:
    """A model to measure: ``build()`` returns it; ``forward_loss(model)`` runs the forward on an
    input prepared once by the variant's builder and returns the loss."""
    name: str
    build: Callable[[], nn.Module]
    forward_loss: Callable[[nn.Module], Tensor]


@dataclass
class Measurement:
    name: str
    saved_mb: float
    peak_mb: float
    step_ms: float
    params_m: float
    ratios: Optional[Dict[str, float]] = None
    rss_peak_mb: Optional[float] = None  # the second measurement (see .rss), when taken
    cuda_max_allocated_mb: Optional[float] = None  # CUDA: absolute peaks of the measured steps
    cuda_max_reserved_mb: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _start_ns(event) -> int:
    """A profiler event's start time; torch < 2.2's events have start_us() only."""
    return event.start_ns() if hasattr(event, 'start_ns') else event.start_us() * 1000


def profiled_events(run: Callable[[], None], cuda: bool = False) -> list:
    """The profiler events (ops, ranges and ``[memory]`` allocation events) of ``run()``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        run()
    return prof.profiler.kineto_results.events()


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    """Peak of live CPU bytes allocated while ``run()`` executes, from profiler memory events."""
    events = [e for e in profiled_events(run) if e.name() == '[memory]'
              and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=_start_ns):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> Tuple[int, int, int]:
    """Peak allocated bytes of ``run()`` above those allocated before it, and the absolute
    ``max_memory_allocated`` and ``max_memory_reserved`` while it ran."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    allocated = torch.cuda.max_memory_allocated(device)
    return allocated - before, allocated, torch.cuda.max_memory_reserved(device)


def measure(variant: Variant, device: torch.device, iters: int = 5, warmup: int = 1) -> Measurement:
    """Measure one variant (see module docstring)."""
    model = variant.build().to(device)
    model.train()  # not chained: some mm backbones' train() returns None
    params = [p for p in model.parameters()]

    def step():
        loss = variant.forward_loss(model)
        loss.backward()

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(max(warmup, 1)):  # also allocates the .grad buffers
        step()
    model.zero_grad(set_to_none=False)
    with count_saved_bytes(params) as saved:
        loss = variant.forward_loss(model)
    loss.backward()
    del loss
    gc.collect()
    absolute = {}
    if device.type == 'cuda':
        peaks = [_cuda_peak_bytes(step, device) for _ in range(iters)]
        peak = statistics.median(p[0] for p in peaks)
        absolute = dict(cuda_max_allocated_mb=max(p[1] for p in peaks) / MB,
                        cuda_max_reserved_mb=max(p[2] for p in peaks) / MB)
    else:
        peak = statistics.median(_cpu_peak_bytes(step) for _ in range(iters))
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    result = Measurement(name=variant.name, saved_mb=saved.total / MB, peak_mb=peak / MB,
                         step_ms=statistics.median(times),
                         params_m=sum(p.numel() for p in params) / 1e6, **absolute)
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def compare(variants: Sequence[Variant], device: torch.device, iters: int = 5, warmup: int = 1,
            log: Callable[[str], None] = print) -> List[Measurement]:
    """Measure ``variants`` in order and add ratios to each of :data:`PEERS` present."""
    results = []
    for index, variant in enumerate(variants, 1):
        log(f'[{index}/{len(variants)}] {variant.name} ...')
        result = measure(variant, device, iters=iters, warmup=warmup)
        log(f'    saved {result.saved_mb:8.1f} MB   peak {result.peak_mb:8.1f} MB   '
            f'step {result.step_ms:8.1f} ms')
        results.append(result)
    by_name = {r.name: r for r in results}
    for result in results:
        result.ratios = {}
        for peer in PEERS:
            if peer in by_name and peer != result.name:
                ref = by_name[peer]
                result.ratios[f'saved_vs_{peer}'] = result.saved_mb / ref.saved_mb
                result.ratios[f'peak_vs_{peer}'] = result.peak_mb / ref.peak_mb
                result.ratios[f'time_vs_{peer}'] = result.step_ms / ref.step_ms
    return results


def markdown_table(results: Sequence[Measurement], title: str = '') -> str:
    """The results as a markdown table (ratios to conventional and checkpointing when known, and to
    cp_all where there is one; the resident-memory peak and its ratio to the allocator peak when
    measured)."""
    peers = ['conventional', 'checkpointing'] + [
        p for p in PEERS[2:] if any(f'peak_vs_{p}' in (r.ratios or {}) for r in results)]
    lines = [f'#### {title}', ''] if title else []
    lines += ['| variant | saved for backward (MB) | peak step memory (MB) | peak, resident (MB) | '
              'step time (ms) | ' + ' | '.join(f'peak / {p}' for p in peers) + ' | ' +
              ' | '.join(f'time / {p}' for p in peers) + ' |',
              '|---|---:|---:|---:|---:|' + '---:|' * (2 * len(peers))]

    def ratio(r, key):
        value = (r.ratios or {}).get(key)
        return f'{value:.2f}' if value is not None else '—'

    for r in results:
        rss = '—' if r.rss_peak_mb is None else f'{r.rss_peak_mb:.1f} ({r.rss_peak_mb / r.peak_mb:.2f}×)'
        cells = [ratio(r, f'{kind}_vs_{p}') for kind in ('peak', 'time') for p in peers]
        lines.append(f'| {r.name} | {r.saved_mb:.1f} | {r.peak_mb:.1f} | {rss} | {r.step_ms:.0f} | '
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
