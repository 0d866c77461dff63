# The TAD "frozen backbone" row (paper Table 2, row 1): the Kinetics-400 Video Swin-T only extracts
# features (no gradients, eval mode, run under no_grad); only the head trains.
_base_ = './tad_swin_t_anet.py'

model = dict(freeze_backbone=True)
