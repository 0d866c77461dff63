# VideoMAE ViT-S action recognition on Something-Something-v2 with a reversible Dr²Net backbone,
# the paper's action-recognition row (Tab. 2: 29.3 GB conventional, 6.0 GB Dr²Net): the recipe of
# videomae_vit_s_sthv2.py with the backbone swapped to Dr2NetVideoViT (mmaction2's
# VisionTransformer arguments and state dict), starting as the pretrained network (α=1, β=0.1).
# AlphaBetaHook moves (α, β) to (0.3, 0.7) over the first 10 of the 40 epochs (the paper's Tab. 6:
# the dynamic schedule matters most for VideoMAE). Baselines: videomae_vit_s_sthv2.py and
# videomae_vit_s_cp_sthv2.py.
_base_ = './videomae_vit_s_sthv2.py'

model = dict(
    backbone=dict(
        type='Dr2NetVideoViT',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        stream_dtype='exact'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_epoch=10,
        interval=2,  # η (paper Table 11: smaller η is better)
        policy='linear',
        schedule='simultaneous')
]
