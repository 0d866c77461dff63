# The VideoMAE ViT-S baseline with activation checkpointing of every block (torch.utils.checkpoint,
# as timm's set_grad_checkpointing): the memory peer a user would otherwise pick.
_base_ = './videomae_vit_s_sthv2.py'

model = dict(backbone=dict(with_cp=True))
