# The conventional baseline with activation checkpointing in every ViT block (PlainViT with_cp=True):
# the memory peer a user would otherwise pick.
_base_ = './pix4point_vit_s_s3dis.py'

model = dict(backbone=dict(with_cp=True))
