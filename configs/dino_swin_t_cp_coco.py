# The baseline with activation checkpointing in every Swin block (mmdet `with_cp=True`): the memory
# peer a user would otherwise pick.
_base_ = './dino_swin_t_coco.py'

model = dict(backbone=dict(with_cp=True))
