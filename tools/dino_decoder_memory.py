"""What DINO's decoder keeps for backward, plain vs checkpointed (the lean-decoder choice of
Dr2NetDINO), one training forward of DINO-4scale Swin-T (configs/dino_swin_t_cp_all_coco.py,
random weights, 3 boxes per image; the decoder's figures do not depend on the backbone's or
encoder's mode)::

    python tools/dino_decoder_memory.py --size 800x1333 --batch 1

Per decoder mode: the bytes saved for backward inside ``forward_decoder`` (activations, parameters
excluded, each storage once; ``dr2net_mm.core.count_saved_bytes``), the share saved inside the
decoder layers' self-attention (the heads × Q × Q matrices), and the number of queries Q
(matching + denoising). With checkpointed layers the backward recomputes one layer at a time, so
its transient is about one layer's share of the plain figure.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mmengine.config import Config  # noqa: E402

from dr2net_mm.benchmark import MB  # noqa: E402
from dr2net_mm.benchmark.batches import detector_batch  # noqa: E402
from dr2net_mm.benchmark.variants import build_model  # noqa: E402
from dr2net_mm.core.memory import SavedBytes  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs/dino_swin_t_cp_all_coco.py')


def decoder_saved_bytes(mode: str, size, batch: int) -> dict:
    """Saved bytes of ``forward_decoder`` (and of its self-attention calls) for decoder ``mode``."""
    cfg = Config.fromfile(CONFIG)
    cfg.model.decoder['mode'] = mode
    model = build_model(cfg, 'mmdet').train()
    params = list(model.parameters())
    total, attention, scope, queries = SavedBytes(params), SavedBytes(params), [], []

    def pack(tensor):
        total._pack(tensor)
        if scope:
            attention._pack(tensor)
        return tensor

    for layer in model.decoder.layers:
        layer.self_attn.register_forward_pre_hook(lambda m, a, k: scope.append(1), with_kwargs=True)
        layer.self_attn.register_forward_hook(lambda m, a, k, o: scope.clear(), with_kwargs=True)
    forward_decoder = model.forward_decoder

    def counted(*args, **kwargs):
        queries.append(kwargs['query'].shape[1])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return forward_decoder(*args, **kwargs)

    model.forward_decoder = counted
    data = model.data_preprocessor(detector_batch(batch, size, model.bbox_head.num_classes), True)
    model(**data, mode='loss')
    return dict(mode=mode, queries=queries[0], layers=len(model.decoder.layers),
                saved_mb=total.total / MB, self_attention_mb=attention.total / MB)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', default='800x1333', help='HxW')
    parser.add_argument('--batch', type=int, default=1)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split('x'))
    print(f'DINO-4scale Swin-T, {args.size}, batch {args.batch}: decoder, saved for '
          'backward')
    for mode in ('plain', 'checkpoint'):
        r = decoder_saved_bytes(mode, size, args.batch)
        print(f"  {mode:10s} {r['saved_mb']:8.1f} MB  (self-attention {r['self_attention_mb']:.1f} "
              f"MB; {r['layers']} layers, Q = {r['queries']} queries)")


if __name__ == '__main__':
    main()
