# The RVOS baseline with activation checkpointing (mmaction2 `with_cp=True`: both residual branches
# of every Video Swin block recomputed in backward): the memory peer a user would otherwise pick.
_base_ = './rvos_swin_t_a2d.py'

model = dict(backbone=dict(with_cp=True))
