# The TAD baseline with activation checkpointing (mmaction2 `with_cp=True`: both residual branches of
# every Video Swin block recomputed in backward): the memory peer a user would otherwise pick.
_base_ = './tad_swin_t_anet.py'

model = dict(backbone=dict(with_cp=True))
