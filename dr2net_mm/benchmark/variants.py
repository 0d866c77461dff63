"""The models the benchmarks compare, as :class:`~dr2net_mm.benchmark.measure.Variant` lists: bare
backbones (mmdet Swin / mmaction2 Video Swin / timm ViT against Dr²Net, with and without
checkpointing) and whole mm models built from configs by one :func:`build_model` and trained with one
:func:`training_loss`."""
import copy
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..branches import StageOptions
from .batches import detector_batch, image_batch, segmentor_batch, synthetic_point_batch
from .measure import Variant

__all__ = [
    'swin_variants', 'swin3d_variants', 'vit_variants', 'video_vit_variants', 'build_model',
    'training_loss', 'mm_model_variants', 'detector_variants', 'segmentor_variants',
    'points_variants', 'swap_backbone'
]


def _square_loss(outputs) -> Tensor:
    """Σ mean(o²) over the feature maps: every output gets a non-degenerate gradient (a plain
    mean would give zero gradients through the output LayerNorms at their initial weights)."""
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    return sum(o.float().pow(2).mean() for o in outputs)


# Extra Dr²Net variants (other stream settings than the defaults) by name.
STREAM_OPTIONS = {
    'dr2net_fp32': dict(stream_dtype='float32'),
    'dr2net_f64': dict(stream_dtype='float64'),  # one segment: imprecise near (1, 0.1)
    'dr2net_f64_seg4': dict(stream_dtype='float64', segment_size=4),  # the float64 way to precision
}


def _stream_options(model: str, name: str) -> dict:
    if name not in STREAM_OPTIONS:
        raise ValueError(f'unknown extra {model} variant {name!r}; choose from '
                         f'{sorted(STREAM_OPTIONS)}')
    return STREAM_OPTIONS[name]


def _with_cp_variants(label: str, model_cls, dr2net_cls, common: dict, x: Tensor,
                      extra: Sequence[str], checkpointing_cls=None) -> List[Variant]:
    """``model_cls(**common)`` (conventional), ``checkpointing_cls(with_cp=True, **common)``
    (checkpointing; by default ``model_cls``), ``dr2net_cls(**common)`` (Dr²Net defaults) and the
    ``extra`` stream options of ``dr2net_cls``, each built with seed 0 and trained on ``x`` with the
    square loss."""
    checkpointing_cls = checkpointing_cls or model_cls
    def forward_loss(model):
        return _square_loss(model(x))

    def seeded(factory):
        def build():
            torch.manual_seed(0)
            return factory()
        return build

    variants = [
        Variant('conventional', seeded(lambda: model_cls(**common)), forward_loss),
        Variant('checkpointing', seeded(lambda: checkpointing_cls(with_cp=True, **common)),
                forward_loss),
        Variant('dr2net', seeded(lambda: dr2net_cls(**common)), forward_loss),
    ]
    for name in extra:
        options = _stream_options(label, name)
        variants.append(Variant(name, seeded(lambda o=options: dr2net_cls(**o, **common)),
                                forward_loss))
    return variants


def swin_variants(size: int, batch: int = 1, depths: Sequence[int] = (2, 2, 6, 2),
                  embed_dims: int = 96, num_heads: Sequence[int] = (3, 6, 12, 24),
                  window_size: int = 7, out_indices: Sequence[int] = (0, 1, 2, 3),
                  device: torch.device = torch.device('cpu'),
                  extra: Sequence[str] = ('dr2net_fp32', )) -> List[Variant]:
    """mmdet ``SwinTransformer`` (conventional, ``with_cp=True`` = checkpointing) vs ``Dr2NetSwin``
    at the start point (1, 0.1) with its defaults (``dr2net``: exact streams, one segment per stage)
    and, in ``extra``, other streams (:data:`STREAM_OPTIONS`)."""
    from mmdet.models.backbones import SwinTransformer

    from ..models import Dr2NetSwin
    common = dict(embed_dims=embed_dims, depths=tuple(depths), num_heads=tuple(num_heads),
                  window_size=window_size, out_indices=tuple(out_indices), drop_path_rate=0.2)
    return _with_cp_variants('Swin', SwinTransformer, Dr2NetSwin, common,
                             image_batch(batch, size, device), extra)


def swin3d_variants(frames: int, size: int, batch: int = 1, arch: Union[str, dict] = 'tiny',
                    window_size: Sequence[int] = (8, 7, 7), patch_size: Sequence[int] = (2, 4, 4),
                    device: torch.device = torch.device('cpu'),
                    extra: Sequence[str] = ()) -> List[Variant]:
    """mmaction2 ``SwinTransformer3D`` (conventional, ``with_cp=True`` = checkpointing) vs
    ``Dr2NetSwin3D`` at the start point (1, 0.1) with its defaults (``dr2net``: exact streams, one
    segment per stage) and, in ``extra``, other streams (:data:`STREAM_OPTIONS`), on clips
    ``(batch, 3, frames, size, size)``; ``arch`` as mmaction2 ('tiny', 'small', ... or a dict)."""
    # (``import dr2net_mm``, which ran before this module, makes ``mmaction.models`` importable)
    from mmaction.models.backbones.swin import SwinTransformer3D

    from ..models.swin3d import Dr2NetSwin3D
    common = dict(arch=copy.deepcopy(arch), window_size=tuple(window_size),
                  patch_size=tuple(patch_size), pretrained2d=False, drop_path_rate=0.2)
    x = torch.randn(batch, 3, frames, size, size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    return _with_cp_variants('Video Swin', SwinTransformer3D, Dr2NetSwin3D, common, x, extra)


def vit_variants(size: int, batch: int = 1, arch: str = 'vit_small_patch16_224',
                 out_indices: Sequence[int] = (-1, ), device: torch.device = torch.device('cpu'),
                 extra: Sequence[str] = ()) -> List[Variant]:
    """timm ``VisionTransformer`` (conventional; ``set_grad_checkpointing()`` = checkpointing) vs
    ``Dr2NetViT`` at (1, 0.1) with its defaults (exact streams, one segment) and, in ``extra``, other
    streams (:data:`STREAM_OPTIONS`). All return the patch tokens after the final norm (timm:
    ``forward_features``; Dr2NetViT: the NCHW map of the last block)."""
    import timm

    from ..models import Dr2NetViT
    x = image_batch(batch, size, device)

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
    for name in extra:
        variants.append(Variant(name, dr2net(**_stream_options('ViT', name)), dr2net_loss))
    return variants


def video_vit_variants(frames: int = 16, size: int = 224, batch: int = 1, embed_dims: int = 384,
                       depth: int = 12, num_heads: int = 6,
                       device: torch.device = torch.device('cpu'),
                       extra: Sequence[str] = ()) -> List[Variant]:
    """mmaction2's VideoMAE ``VisionTransformer`` (conventional), ``PlainVideoViT(with_cp=True)``
    (checkpointing: the same network and state dict, every block recomputed in backward) and
    ``Dr2NetVideoViT`` at (1, 0.1) with its defaults (``dr2net``: exact streams, one segment) plus, in
    ``extra``, other streams (:data:`STREAM_OPTIONS`). Input: a ``(batch, 3, frames, size, size)``
    clip (tubelets 2×16×16); every variant returns mmaction2's mean-pooled ``fc_norm`` features."""
    from mmaction.models.backbones.vit_mae import VisionTransformer

    from ..models import Dr2NetVideoViT, PlainVideoViT
    common = dict(img_size=size, patch_size=16, embed_dims=embed_dims, depth=depth,
                  num_heads=num_heads, num_frames=frames, tubelet_size=2, drop_path_rate=0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, frames, size, size, generator=gen).to(device)
    return _with_cp_variants('VideoViT', VisionTransformer, Dr2NetVideoViT, common, x, extra,
                             checkpointing_cls=PlainVideoViT)


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
    if 'pretrained' in cfg.model.backbone:  # mmaction2's SwinTransformer3D loads it itself,
        cfg.model.backbone.pretrained = None  # and with pretrained2d=True inflates even None
        if 'pretrained2d' in cfg.model.backbone:
            cfg.model.backbone.pretrained2d = False
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
    synthetic crops of ``num_points`` points (:func:`.batches.synthetic_point_batch`)."""
    return mm_model_variants(
        configs, lambda model: synthetic_point_batch(model, num_points, batch), None)


def swap_backbone(cfg, backbone_type: str, **overrides):
    """A copy of a detector/segmentor config with its Swin backbone switched between the mm
    ``SwinTransformer`` and ``Dr2NetSwin`` (the Dr²Net-only arguments dropped or added)."""
    cfg = copy.deepcopy(cfg)
    backbone = cfg.model.backbone
    for key in StageOptions._fields:
        backbone.pop(key, None)
    backbone.type = backbone_type
    backbone.update(overrides)
    return cfg
