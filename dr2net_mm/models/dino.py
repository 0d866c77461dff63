"""Dr2NetDINO: mmdet's DINO with a choice of memory for its transformer, part by part.

DINO's training step at 800×1333 holds most of its memory in the deformable encoder (~22k
multi-scale tokens × 6 layers) and the decoder (self-attention over 900 + denoising queries in each
of 6 layers), not in the backbone. ``Dr2NetDINO`` keeps mmdet's DINO (arguments, submodules, state
dict, outputs) and selects per part, in the ``encoder`` / ``decoder`` config dicts::

    encoder=dict(mode='reversible', alpha=1.0, beta=0.1, stream_dtype='exact')   # Dr²Net stage
    encoder=dict(mode='checkpoint')     # every layer recomputed in backward
    decoder=dict(mode='checkpoint')     # every layer recomputed in backward
    (mode='plain', the default: mmdet's encoder / decoder)

* ``'reversible'``: :class:`~dr2net_mm.models.deformable_encoder.Dr2NetDeformableEncoder` (the
  Dr²Net arguments ``alpha``, ``beta``, ``reversible``, ``stream_dtype``, ``segment_size``
  as for the backbones; ``AlphaBetaHook`` drives it with the backbone). Its state dict is mmdet's
  plus ``encoder.alpha``/``encoder.beta``, which an mmdet checkpoint need not have.
* ``'checkpoint'``: each layer runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``
  in training (DDP-safe with unused parameters, RNG replayed; no fairscale): the forward keeps each
  layer's inputs only and the backward recomputes one layer at a time. The state dict is mmdet's.

The lean decoder is ``decoder=dict(mode='checkpoint')``, chosen by measurement: at 800×1333, batch 1
(DINO-4scale Swin-T, CPU; ``python tools/dino_decoder_memory.py --size 800x1333 --batch 1``) the
plain decoder keeps 654.3 MB for backward (265.8 MB of it self-attention, 1098 queries), the
checkpointed one 39.8 MB. Its backward recomputes one layer at a time, whose self-attention holds
about 266 / 6 ≈ 44 MB: all that memory-efficient attention could still remove, so it was not added
(``docs/detection.md``, Dr²Net-all).

:func:`lean_transformer` applies the same to a built DETR-family detector; a mode its encoder cannot
take (not Deformable-DETR-like) is refused before anything changes.
"""
import copy
from typing import Any, Dict, Optional

import torch
from mmdet.models.detectors import DINO
from mmengine.registry import MODELS
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..branches import StageOptions
from .deformable_encoder import Dr2NetDeformableEncoder, check_deformable_encoder

__all__ = ['Dr2NetDINO', 'lean_transformer', 'checkpoint_layers', 'ENCODER_MODES',
           'DECODER_MODES']

ENCODER_MODES = ('plain', 'checkpoint', 'reversible')
DECODER_MODES = ('plain', 'checkpoint')


class CheckpointedLayer:
    """Put before a layer class: in training with gradients, ``forward`` is recomputed in backward
    (``torch.utils.checkpoint``, non-reentrant) instead of keeping its activations."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


_CHECKPOINTED: Dict[type, type] = {}


def _checkpointed_type(cls: type) -> type:
    """``Checkpointed<cls>``: ``(CheckpointedLayer, cls)``, made once per class and kept in this
    module (so that pickle finds it)."""
    if issubclass(cls, CheckpointedLayer):
        return cls
    if cls not in _CHECKPOINTED:
        name = f'Checkpointed{cls.__name__}'
        if name in globals():
            raise ValueError(f'two layer classes named {cls.__name__} cannot both be checkpointed')
        new = type(name, (CheckpointedLayer, cls), {'__module__': __name__, '__qualname__': name})
        globals()[name] = _CHECKPOINTED[cls] = new
    return _CHECKPOINTED[cls]


def checkpoint_layers(layers: nn.ModuleList) -> None:
    """Make every layer of ``layers`` a checkpointed layer (:class:`CheckpointedLayer`), in place:
    the same module, parameters and state-dict keys; only its class gains the checkpointed
    ``forward``."""
    for layer in layers:
        layer.__class__ = _checkpointed_type(type(layer))


def _check_mode(part: str, mode: Any, modes: tuple) -> str:
    if mode not in modes:
        raise ValueError(f"{part}=dict(mode={mode!r}): choose one of {', '.join(map(repr, modes))}")
    return mode


def split_options(part: str, cfg: Optional[dict], modes: tuple) -> tuple:
    """``(cfg without the Dr²Net keys, mode, Dr²Net options)`` from an encoder/decoder config,
    checked: the mode is one of ``modes``, Dr²Net options only with ``mode='reversible'``."""
    cfg = copy.deepcopy(dict(cfg or {}))
    mode = _check_mode(part, cfg.pop('mode', 'plain'), modes)
    options = {k: cfg.pop(k) for k in StageOptions._fields if k in cfg}
    if options and mode != 'reversible':
        raise ValueError(f'{part}=dict(mode={mode!r}) takes no Dr²Net options; got '
                         f"{sorted(options)} (they need {part}=dict(mode='reversible'))")
    return cfg, mode, options


def lean_transformer(detector: nn.Module, encoder: str = 'plain', decoder: str = 'plain',
                     **options: Any) -> nn.Module:
    """Give a built DETR-family ``detector`` the chosen encoder and decoder (module docstring), in
    place, and return it. ``options``: the Dr²Net arguments of a reversible encoder.

    Checked before anything changes: the modes, and for a non-plain encoder that the detector's is
    mmdet's Deformable-DETR encoder; a reversible encoder takes over the weights of the current one
    (same keys). Raises ``ValueError`` naming the bad value or type and what to use instead."""
    _check_mode('encoder', encoder, ENCODER_MODES)
    _check_mode('decoder', decoder, DECODER_MODES)
    if options and encoder != 'reversible':
        raise ValueError(f"Dr²Net options {sorted(options)} need encoder='reversible', got "
                         f'{encoder!r}')
    if encoder != 'plain':
        check_deformable_encoder(detector.encoder, f'encoder=dict(mode={encoder!r})')
        if detector.encoder.num_cp > 0:
            raise ValueError(f'encoder num_cp={detector.encoder.num_cp} (fairscale) and '
                             f'encoder=dict(mode={encoder!r}): set num_cp=-1')
    layers = getattr(getattr(detector, 'decoder', None), 'layers', None)
    if decoder != 'plain' and not isinstance(layers, nn.ModuleList):
        raise ValueError(f"decoder=dict(mode={decoder!r}) needs a decoder with a 'layers' "
                         f'ModuleList; {type(detector).__name__} has '
                         f'{type(getattr(detector, "decoder", None)).__name__}')
    if encoder == 'reversible':
        old = detector.encoder
        with torch.random.fork_rng(devices=[]):  # the detector's random init stays mmdet's
            new = Dr2NetDeformableEncoder(num_layers=old.num_layers, layer_cfg=old.layer_cfg,
                                          init_cfg=old.init_cfg, **options)
        new.load_state_dict(old.state_dict(), strict=False)  # only alpha/beta are new
        param = next(old.parameters(), None)
        detector.encoder = new.to(param.device) if param is not None else new
    elif encoder == 'checkpoint':
        checkpoint_layers(detector.encoder.layers)
    if decoder == 'checkpoint':
        checkpoint_layers(layers)
    return detector


@MODELS.register_module()
class Dr2NetDINO(DINO):
    """mmdet's DINO whose encoder and decoder are chosen by ``encoder=dict(mode=...)`` and
    ``decoder=dict(mode=...)`` (module docstring); every other argument is DINO's. The modes and
    options are checked before anything is built."""

    def __init__(self, *args, encoder: Optional[dict] = None, decoder: Optional[dict] = None,
                 **kwargs):
        encoder, encoder_mode, options = split_options('encoder', encoder, ENCODER_MODES)
        decoder, decoder_mode, decoder_options = split_options('decoder', decoder, DECODER_MODES)
        if encoder_mode != 'plain' and encoder.get('num_cp', -1) > 0:
            raise ValueError(f'encoder num_cp={encoder["num_cp"]} uses fairscale; with '
                             f'encoder=dict(mode={encoder_mode!r}) set num_cp=-1')
        self._lean_modes = dict(encoder=encoder_mode, decoder=decoder_mode, **options)
        super().__init__(*args, encoder=encoder, decoder=decoder, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        lean_transformer(self, **self._lean_modes)
