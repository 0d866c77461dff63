"""Deprecated module name, kept so that old imports and ``python -m dr2net_mm.demo_data`` work: the
demo image sets and checkpoints are in :mod:`dr2net_mm.demo.data`."""
from .demo.data import (DEMO_CLASSES, DEMO_SEG_CLASSES, ade20k_ids, already_written, main,
                        make_demo_ade20k, make_demo_coco, write_stamp,
                        write_swin_official_checkpoint, write_vit_timm_checkpoint)

__all__ = [
    'DEMO_CLASSES', 'DEMO_SEG_CLASSES', 'ade20k_ids', 'already_written', 'main', 'make_demo_ade20k',
    'make_demo_coco', 'write_stamp', 'write_swin_official_checkpoint', 'write_vit_timm_checkpoint'
]

if __name__ == '__main__':
    main()
