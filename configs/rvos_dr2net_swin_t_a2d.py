# Referring video object segmentation on A2D-Sentences with a reversible Dr²Net Video Swin-T:
# rvos_swin_t_a2d.py's recipe with the backbone swapped to Dr2NetSwin3D, which keeps
# SwinTransformer3D's arguments and state-dict layout and starts as the pretrained network (α=1,
# β=0.1). AlphaBetaHook moves (α, β) to (0.3, 0.7) over the first 20 of the 70 epochs.
# Baselines: rvos_swin_t_a2d.py, rvos_swin_t_cp_a2d.py, rvos_swin_t_frozen_a2d.py.
_base_ = './rvos_swin_t_a2d.py'

model = dict(
    backbone=dict(
        type='Dr2NetSwin3D',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        # exact streams: bit-exact rebuilds at every (α, β), one segment per stage
        # (docs/precision.md)
        stream_dtype='exact'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_epoch=20,  # τ: about a third of the 70 epochs
        interval=2,  # η: update every 2 iterations (paper Table 11: smaller η is better)
        policy='linear',
        schedule='simultaneous')
]
