# DINO-4scale with a reversible Dr²Net Swin-T backbone on COCO (paper Table 3: 51.3 mAP at 30.0 GB,
# vs 54.0 GB conventional). Same detector, checkpoint and schedule as dino_swin_t_coco.py; the
# backbone starts as the pretrained Swin-T (α=1, β=0.1) and AlphaBetaHook moves it to the
# precise reversible point (0.3, 0.7) over the first half of training.
_base_ = './dino_swin_t_coco.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

model = dict(
    backbone=dict(
        type='Dr2NetSwin',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        # Exact streams (the default): every stage rebuilds its streams bit for bit at any (α, β),
        # so one segment per stage gives fp32 autograd's own gradient error already at the start
        # point (1, 0.1). The float64 alternative needs segment_size=4 there. See docs/precision.md.
        stream_dtype='exact'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_epoch=6,  # τ: half of the 12-epoch schedule
        interval=2,  # η: paper Table 11, smaller η is better
        policy='linear',
        schedule='simultaneous')
]

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
