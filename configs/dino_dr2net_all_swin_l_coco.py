# Dr²Net-all on the mmdet zoo's DINO-5scale Swin-L (dino-5scale_swin-l_8xb2-12e_coco.py): a
# reversible Dr²Net Swin-L backbone (2-2-18-2, window 12; the zoo's ImageNet-22k checkpoint loads
# unchanged), a reversible deformable encoder and a checkpointed decoder. Baseline:
# dino_swin_l_cp_all_coco.py. AlphaBetaHook moves backbone and encoder together from (1, 0.1) to
# (0.3, 0.7) over the first half of the 12 epochs.
_base_ = 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

model = dict(
    type='Dr2NetDINO',
    backbone=dict(
        type='Dr2NetSwin',
        with_cp=False,  # the zoo config checkpoints its blocks; a reversible stage needs not
        alpha=1.0,
        beta=0.1,
        reversible=True,
        stream_dtype='exact'),  # bit-exact rebuilds at any (α, β) (docs/precision.md)
    encoder=dict(mode='reversible', alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact'),
    decoder=dict(mode='checkpoint'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_epoch=6,  # τ: half of the 12-epoch schedule
        interval=2,
        policy='linear',
        schedule='simultaneous')
]

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
