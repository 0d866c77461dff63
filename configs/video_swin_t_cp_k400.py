# The Video Swin-T baseline with activation checkpointing (mmaction2 `with_cp=True`: both residual
# branches of every block recomputed in backward): the memory peer a user would otherwise pick.
_base_ = './video_swin_t_k400.py'

model = dict(backbone=dict(with_cp=True))
