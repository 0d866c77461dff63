"""The referring video segmentation benchmark: whole training steps of the four A2D-Sentences RVOS
configs (conventional, ``with_cp`` = checkpointing, Dr²Net, frozen backbone) on synthetic clips,
one setting per clip length (``tools/benchmark.py rvos --frames 8 16 ...``).

Each variant is the config's whole segmentor (:func:`~dr2net_mm.benchmark.variants.build_model`:
random weights, pretrained loading off) with the configured RoBERTa-base architecture (frozen, as
configured) over a word vocabulary instead of its BPE tokenizer (the tokenizer files cannot be
downloaded; the frozen encoder keeps no activations, so the choice does not change the step's
memory), trained on a batch of ``batch`` uint8 clips of ``frames`` frames of ``size``² with two
target masks each (one referred) and an 8-word sentence, through the data preprocessor and the
``'loss'`` mode (:func:`~dr2net_mm.benchmark.variants.mm_model_variants`). The memory figures are
:mod:`~dr2net_mm.benchmark.measure`'s.
"""
import os
import tempfile
from typing import Dict, List

import torch

from .measure import Variant
from .variants import mm_model_variants

__all__ = ['RVOS_CONFIGS', 'rvos_batch', 'rvos_variants']

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RVOS_CONFIGS = {
    'conventional': 'configs/rvos_swin_t_a2d.py',
    'checkpointing': 'configs/rvos_swin_t_cp_a2d.py',
    'dr2net': 'configs/rvos_dr2net_swin_t_a2d.py',
    'frozen': 'configs/rvos_swin_t_frozen_a2d.py',
}
SENTENCE = 'the man in a red shirt is running to the left'
_VOCAB_DIR = tempfile.mkdtemp(prefix='dr2net_rvos_vocab_')


def rvos_batch(batch: int, frames: int, size: int, seed: int = 0) -> dict:
    """A synthetic RVOS training batch as the dataloader gives it: ``inputs`` ``(1, 3, T, H, W)``
    uint8 per clip, ``data_samples`` with a sentence, the annotated frame in the middle and two
    target masks (the first referred)."""
    from mmaction.structures import ActionDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (1, 3, frames, size, size), dtype=torch.uint8,
                                    generator=gen))
        sample = ActionDataSample(metainfo=dict(sentence=SENTENCE, clip_index=frames // 2,
                                                ori_shape=(size, size)))
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, size // 8:size // 2, size // 8:size // 2] = True
        masks[1, size // 2:, size // 3:] = True
        sample.gt_instances = InstanceData(masks=masks, referred=torch.tensor([True, False]))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def benchmark_config(path: str):
    """The config at ``path`` with its text encoder on a word vocabulary of :data:`SENTENCE`
    (same RoBERTa architecture and ``frozen`` flag; no tokenizer or weight files)."""
    from mmengine.config import Config

    from ..rvos.text import WordTokenizer
    cfg = Config.fromfile(path)
    vocab = os.path.join(_VOCAB_DIR, 'vocab.json')
    if not os.path.isfile(vocab):
        WordTokenizer.build([SENTENCE]).save(vocab)
    text = cfg.model.text_encoder
    cfg.model.text_encoder = dict(config=text.config, vocab_file=vocab,
                                  frozen=text.get('frozen', False))
    return cfg


def rvos_variants(frames: int, size: int, batch: int = 1,
                  configs: Dict[str, str] = RVOS_CONFIGS) -> List[Variant]:
    """The segmentors of ``configs`` (name -> path relative to the repository) on clips of
    ``frames`` × ``size``² (see the module doc)."""
    loaded = {name: benchmark_config(os.path.join(ROOT, path)) for name, path in configs.items()}
    return mm_model_variants(loaded, lambda model: rvos_batch(batch, frames, size), 'mmaction')
