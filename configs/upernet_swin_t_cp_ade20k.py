# The Swin-T UPerNet baseline with activation checkpointing in every Swin block (mmseg `with_cp=True`):
# the memory peer a user would otherwise pick.
_base_ = './upernet_swin_t_ade20k.py'

model = dict(backbone=dict(with_cp=True))
