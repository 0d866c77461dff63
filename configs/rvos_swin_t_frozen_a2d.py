# The RVOS "frozen backbone" row (paper Table 2, row 1): the Kinetics-400 Video Swin-T only
# extracts features (no gradients, eval mode, run under no_grad); the rest trains.
_base_ = './rvos_swin_t_a2d.py'

model = dict(freeze_backbone=True)
