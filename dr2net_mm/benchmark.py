"""Memory and time of one training step, measured the same way for every variant of a model.

Per variant (a constructor for a model in train mode plus an input and a loss):

* ``saved_mb``: bytes saved for backward by the forward (activations only: parameters excluded,
  each storage counted once; :func:`dr2net_mm.core.count_saved_bytes`);
* ``peak_mb``: peak memory of a whole training step (forward + backward, including the transient
  recomputation of reversible stages) above what was allocated before it. Gradient buffers already
  exist (a warm-up step allocated them), so this is activations plus transients. CUDA:
  ``max_memory_allocated`` after ``reset_peak_memory_stats``; CPU: the peak of live bytes from
  ``torch.profiler``'s allocation events (not RSS, which the allocator and imports blur);
* ``step_ms``: median wall time of a training step over ``iters`` steps after ``warmup`` steps.

``compare`` runs variants one after another in one process (so ratios hold on a noisy machine) and
adds ratios to the variants named ``conventional`` and ``checkpointing`` when present.
"""
import copy
import gc
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .core import count_saved_bytes

MB = 2.0**20


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

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    """Peak of live CPU bytes allocated while ``run()`` executes, from profiler memory events."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'
              and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _cuda_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


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
    if device.type == 'cuda':
        peak = _cuda_peak_bytes(step, device)
    else:
        peak = _cpu_peak_bytes(step)
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    result = Measurement(name=variant.name, saved_mb=saved.total / MB, peak_mb=peak / MB,
                         step_ms=statistics.median(times),
                         params_m=sum(p.numel() for p in params) / 1e6)
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def compare(variants: Sequence[Variant], device: torch.device, iters: int = 5, warmup: int = 1,
            log: Callable[[str], None] = print) -> List[Measurement]:
    """Measure ``variants`` in order and add ratios to ``conventional`` / ``checkpointing``."""
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
        for peer in ('conventional', 'checkpointing'):
            if peer in by_name and peer != result.name:
                ref = by_name[peer]
                result.ratios[f'saved_vs_{peer}'] = result.saved_mb / ref.saved_mb
                result.ratios[f'peak_vs_{peer}'] = result.peak_mb / ref.peak_mb
                result.ratios[f'time_vs_{peer}'] = result.step_ms / ref.step_ms
    return results


def markdown_table(results: Sequence[Measurement], title: str = '') -> str:
    """The results as a markdown table (ratios to conventional and checkpointing when known)."""
    lines = [f'#### {title}', ''] if title else []
    lines += ['| variant | saved for backward (MB) | peak step memory (MB) | step time (ms) | '
              'peak / conventional | peak / checkpointing | time / conventional |',
              '|---|---:|---:|---:|---:|---:|---:|']

    def ratio(r, key):
        value = (r.ratios or {}).get(key)
        return f'{value:.2f}' if value is not None else '—'

    for r in results:
        lines.append(f'| {r.name} | {r.saved_mb:.1f} | {r.peak_mb:.1f} | {r.step_ms:.0f} | '
                     f'{ratio(r, "peak_vs_conventional")} | {ratio(r, "peak_vs_checkpointing")} | '
                     f'{ratio(r, "time_vs_conventional")} |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# Variants of the models the README reports. Each builder returns a list of Variant.
# ------------------------------------------------------------------------------------------------
def _square_loss(outputs) -> Tensor:
    """Σ mean(o²) over the feature maps: every output gets a non-degenerate gradient (a plain
    mean would give zero gradients through the output LayerNorms at their initial weights)."""
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    return sum(o.float().pow(2).mean() for o in outputs)


def _image_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen).to(device)


def swin_variants(size: int, batch: int = 1, depths: Sequence[int] = (2, 2, 6, 2),
                  embed_dims: int = 96, num_heads: Sequence[int] = (3, 6, 12, 24),
                  window_size: int = 7, out_indices: Sequence[int] = (0, 1, 2, 3),
                  device: torch.device = torch.device('cpu'),
                  extra: Sequence[str] = ('dr2net_fp32', )) -> List[Variant]:
    """mmdet ``SwinTransformer`` (conventional, ``with_cp=True`` = checkpointing) vs ``Dr2NetSwin``
    at the start point (1, 0.1) with float64 streams (``dr2net``, the default) and, in ``extra``,
    float32 streams (``dr2net_fp32``) or 4-block segments (``dr2net_seg4``)."""
    from mmdet.models.backbones import SwinTransformer

    from .models import Dr2NetSwin
    common = dict(embed_dims=embed_dims, depths=tuple(depths), num_heads=tuple(num_heads),
                  window_size=window_size, out_indices=tuple(out_indices), drop_path_rate=0.2)
    x = _image_batch(batch, size, device)

    def forward_loss(model):
        return _square_loss(model(x))

    def seeded(factory):
        def build():
            torch.manual_seed(0)
            return factory()
        return build

    variants = [
        Variant('conventional', seeded(lambda: SwinTransformer(**common)), forward_loss),
        Variant('checkpointing', seeded(lambda: SwinTransformer(with_cp=True, **common)),
                forward_loss),
        Variant('dr2net', seeded(lambda: Dr2NetSwin(**common)), forward_loss),
    ]
    options = {
        'dr2net_fp32': lambda: Dr2NetSwin(stream_dtype=torch.float32, **common),
        'dr2net_seg4': lambda: Dr2NetSwin(segment_size=4, **common),
    }
    for name in extra:
        if name not in options:
            raise ValueError(f'unknown extra Swin variant {name!r}; choose from {sorted(options)}')
        variants.append(Variant(name, seeded(options[name]), forward_loss))
    return variants


def vit_variants(size: int, batch: int = 1, arch: str = 'vit_small_patch16_224',
                 out_indices: Sequence[int] = (-1, ), device: torch.device = torch.device('cpu'),
                 extra: Sequence[str] = ()) -> List[Variant]:
    """timm ``VisionTransformer`` (conventional; ``set_grad_checkpointing()`` = checkpointing) vs
    ``Dr2NetViT`` at (1, 0.1) with float64 streams. All return the patch tokens after the final
    norm (timm: ``forward_features``; Dr2NetViT: the NCHW map of the last block)."""
    import timm

    from .models import Dr2NetViT
    x = _image_batch(batch, size, device)

    def timm_model(checkpointing: bool):
        def build():
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=size,
                                      drop_path_rate=0.1)
            model.set_grad_checkpointing(checkpointing)
            return model
        return build

    def timm_loss(model):
        return _square_loss(model.forward_features(x))

    def dr2net(**kwargs):
        def build():
            torch.manual_seed(0)
            return Dr2NetViT(arch=arch, img_size=size, out_indices=tuple(out_indices),
                             drop_path_rate=0.1, **kwargs)
        return build

    def dr2net_loss(model):
        return _square_loss(model(x))

    variants = [
        Variant('conventional', timm_model(False), timm_loss),
        Variant('checkpointing', timm_model(True), timm_loss),
        Variant('dr2net', dr2net(), dr2net_loss),
    ]
    options = {'dr2net_fp32': dict(stream_dtype=torch.float32), 'dr2net_seg4': dict(segment_size=8)}
    for name in extra:
        if name not in options:
            raise ValueError(f'unknown extra ViT variant {name!r}; choose from {sorted(options)}')
        variants.append(Variant(name, dr2net(**options[name]), dr2net_loss))
    return variants


def detector_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """A synthetic mmdet training batch: images and 3 random boxes per image."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append((torch.rand(3, size, size, generator=gen) * 255).to(torch.uint8))
        xy = torch.rand(3, 2, generator=gen) * size * 0.6
        wh = torch.rand(3, 2, generator=gen) * size * 0.3 + size * 0.05
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             scale_factor=(1.0, 1.0), pad_shape=(size, size),
                                             batch_input_shape=(size, size)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (3, ), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def segmentor_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """A synthetic mmseg training batch: images and label maps of random rectangles."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append((torch.rand(3, size, size, generator=gen) * 255).to(torch.uint8))
        labels = torch.zeros(1, size, size, dtype=torch.long)
        for _ in range(3):
            x0, y0 = torch.randint(0, size // 2, (2, ), generator=gen).tolist()
            labels[:, y0:y0 + size // 2, x0:x0 + size // 2] = int(
                torch.randint(0, num_classes, (1, ), generator=gen))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def build_model(config, default_scope: Optional[str] = None, seed: int = 0) -> nn.Module:
    """An mm model from a config (a path or a ``Config``) with random weights: pretrained loading
    switched off, built in the config's registry scope (``default_scope`` where the config names
    none; None: the current scope), seeded with ``seed``, SyncBN reverted to BN (one process),
    ``init_weights()`` run (quietly: MMEngine logs every parameter)."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config) if isinstance(config, str) else copy.deepcopy(config)
    scope = cfg.get('default_scope', default_scope)
    if scope is not None:
        init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    if 'pretrained' in cfg.model:  # mmseg segmentors pass it to the backbone
        cfg.model.pretrained = None
    torch.manual_seed(seed)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    # DINO allocates some parameters uninitialised (level_embed, ...): init_weights fills them,
    # otherwise they hold whatever the previous variant left in memory.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def training_loss(model: nn.Module, data: dict) -> Tensor:
    """The loss an mm model's optimiser sees on ``data`` (a batch as the dataloader gives it:
    ``inputs`` + ``data_samples``): the data preprocessor, the ``'loss'`` mode, and the sum of the
    ``loss*`` entries (lists summed)."""
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    total = 0
    for key, value in losses.items():
        if 'loss' in key:
            total = total + (sum(value) if isinstance(value, (list, tuple)) else value)
    return total


def mm_model_variants(configs: Dict[str, Any], make_batch: Callable[[nn.Module], dict],
                      default_scope: Optional[str]) -> List[Variant]:
    """Whole mm models built from configs (``name -> path or Config``) by :func:`build_model`,
    trained on ``make_batch(model)`` (a batch as the dataloader gives it, made once per variant) with
    :func:`training_loss`. Memory and time cover the whole training step, data preprocessing
    included."""

    def builder(config):
        def build():
            model = build_model(config, default_scope)
            model._benchmark_batch = make_batch(model)
            return model
        return build

    return [Variant(name, builder(config),
                    lambda model: training_loss(model, model._benchmark_batch))
            for name, config in configs.items()]


def detector_variants(configs: Dict[str, Any], size: int = 512, batch: int = 2,
                      data: Optional[dict] = None) -> List[Variant]:
    """Whole detectors (see :func:`mm_model_variants`) trained on ``data`` (an mmdet batch) or on a
    synthetic batch of ``batch`` images of ``size``² with 3 boxes each."""
    return mm_model_variants(
        configs, lambda model: data if data is not None else detector_batch(
            batch, size, model.bbox_head.num_classes), 'mmdet')


def segmentor_variants(configs: Dict[str, Any], size: int = 512, batch: int = 2,
                       data: Optional[dict] = None) -> List[Variant]:
    """Whole segmentors (see :func:`mm_model_variants`) trained on ``data`` (an mmseg batch) or on a
    synthetic batch of ``batch`` images of ``size``² with label maps; then the data preprocessor's
    padding size is set to ``size``² too (mmseg's configs pad every input to their crop size)."""
    from mmengine.config import Config
    if data is None:
        configs = {name: Config.fromfile(c) if isinstance(c, str) else copy.deepcopy(c)
                   for name, c in configs.items()}
        for cfg in configs.values():
            if cfg.model.get('data_preprocessor', {}).get('size') is not None:
                cfg.model.data_preprocessor.size = (size, size)
    return mm_model_variants(
        configs, lambda model: data if data is not None else segmentor_batch(
            batch, size, model.decode_head.num_classes), 'mmseg')


def points_variants(configs: Dict[str, Any], num_points: int = 24000,
                    batch: int = 2) -> List[Variant]:
    """Pix4Point segmentors built from configs (see :func:`mm_model_variants`), trained on ``batch``
    synthetic crops of ``num_points`` points (:func:`dr2net_mm.points.synthetic_point_batch`)."""
    from .points import synthetic_point_batch
    return mm_model_variants(
        configs, lambda model: synthetic_point_batch(model, num_points, batch), None)


def swap_backbone(cfg, backbone_type: str, **overrides):
    """A copy of a detector/segmentor config with its Swin backbone switched between the mm
    ``SwinTransformer`` and ``Dr2NetSwin`` (the Dr²Net-only arguments dropped or added)."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg.model.backbone
    for key in ('alpha', 'beta', 'reversible', 'stream_dtype', 'segment_size'):
        backbone.pop(key, None)
    backbone.type = backbone_type
    backbone.update(overrides)
    return cfg
