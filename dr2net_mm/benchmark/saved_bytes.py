"""Bytes saved for backward by one training forward of a ViT-S/16 backbone alone: timm, timm with
gradient checkpointing and Dr2NetViT (``count_saved_bytes``, parameters excluded, each storage once)::

    python -m dr2net_mm.benchmark.saved_bytes
"""
from typing import Optional, Sequence

import timm
import torch

from ..core import count_saved_bytes
from ..models import Dr2NetViT

__all__ = ['vit_saved_bytes', 'main']


def vit_saved_bytes(size: int = 512, depth: int = 12, out_indices: Sequence[int] = (11, ),
                    checkpointing: Optional[bool] = None, exclude_input: bool = False,
                    **kwargs) -> int:
    """Bytes saved for backward by one training forward of ViT-S/16 at ``size``², batch 1:
    ``checkpointing=None`` measures Dr2NetViT, False timm's ``forward_features`` (+ the NCHW reshape),
    True timm with ``set_grad_checkpointing()``. Parameters are excluded (and the input image with
    ``exclude_input``)."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, size, size)
    if checkpointing is None:
        model = Dr2NetViT('vit_small_patch16_224', depth=depth, out_indices=out_indices,
                          **kwargs).train()
        run = model
    else:
        model = timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=0,
                                  global_pool='', depth=depth, dynamic_img_size=True).train()
        model.set_grad_checkpointing(checkpointing)

        def run(x):
            tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
            return tokens.reshape(1, size // 16, size // 16, -1).permute(0, 3, 1, 2).contiguous()
    exclude = list(model.parameters()) + ([images] if exclude_input else [])
    with count_saved_bytes(exclude) as saved:
        run(images)
    return saved.total


def main() -> None:
    """Print the ViT-S/16 saved-bytes table of the README (Results)."""
    mib = 2.0**20
    for exclude_input in (False, True):
        plain = vit_saved_bytes(checkpointing=False, exclude_input=exclude_input)
        cp = vit_saved_bytes(checkpointing=True, exclude_input=exclude_input)
        print(f'exclude input image: {exclude_input}')
        print(f'  timm ViT-S            {plain / mib:8.2f} MiB')
        print(f'  timm ViT-S, grad cp   {cp / mib:8.2f} MiB')
        settings = [(depth, indices, {}) for depth, indices in
                    ((12, (11, )), (12, (3, 5, 7, 11)), (24, (23, )))]
        settings += [(12, (11, ), dict(beta=0.7)), (12, (11, ), dict(stream_dtype='float64')),
                     (24, (23, ), dict(stream_dtype='float64'))]
        for depth, indices, options in settings:
            ours = vit_saved_bytes(depth=depth, out_indices=indices, exclude_input=exclude_input,
                                   **options)
            print(f'  Dr2NetViT depth {depth:2d} out {indices} {options or "(defaults)"}: '
                  f'{ours / mib:6.2f} MiB ({100 * ours / plain:.2f} % of timm, '
                  f'{100 * ours / cp:.2f} % of timm cp)')


if __name__ == '__main__':
    main()
