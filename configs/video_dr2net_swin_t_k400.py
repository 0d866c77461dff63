# Video Swin-T action recognition on Kinetics-400 with a reversible Dr²Net backbone: mmaction2's
# recipe (same ImageNet checkpoint inflated to 3D, head, data, schedule) with the backbone swapped to
# Dr2NetSwin3D, which keeps SwinTransformer3D's arguments and state-dict layout and starts as the
# pretrained network (α=1, β=0.1). AlphaBetaHook moves (α, β) to (0.3, 0.7) over the first 10 of
# the 30 epochs. Baselines: video_swin_t_k400.py, video_swin_t_cp_k400.py.
_base_ = './video_swin_t_k400.py'

model = dict(
    backbone=dict(
        type='Dr2NetSwin3D',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        # exact streams: bit-exact rebuilds at every (α, β), one segment per stage (docs/precision.md)
        stream_dtype='exact'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_epoch=10,  # τ: a third of the 30 epochs
        interval=2,  # η: update every 2 iterations (paper Table 11: smaller η is better)
        policy='linear',
        schedule='simultaneous')
]
