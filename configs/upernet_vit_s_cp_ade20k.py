# The ViT-S UPerNet baseline with activation checkpointing in every transformer layer (mmseg
# `with_cp=True`): the memory peer a user would otherwise pick.
_base_ = './upernet_vit_s_ade20k.py'

model = dict(backbone=dict(with_cp=True))
