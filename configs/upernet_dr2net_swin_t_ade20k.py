# UPerNet with a reversible Dr²Net Swin-T backbone on ADE20K: mmseg's Swin-T UPerNet recipe (same
# checkpoint, heads, data, schedule) with the backbone swapped to Dr2NetSwin, which keeps the
# SwinTransformer state-dict layout and starts as the pretrained Swin-T (α=1, β=0.1).
# AlphaBetaHook moves (α, β) to the precise reversible point (0.3, 0.7) over the first half of the
# 160k iterations. Baseline: upernet_swin_t_ade20k.py.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

model = dict(
    backbone=dict(
        type='Dr2NetSwin',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        # exact streams: fp32-autograd precision already at (1, 0.1) in one segment per stage; see
        # configs/dino_dr2net_swin_t_coco.py and docs/precision.md.
        stream_dtype='exact'))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_iter=80000,  # τ: half of the 160k-iteration schedule
        interval=2,  # η: update every 2 iterations (paper Table 11: smaller η is better)
        policy='linear',
        schedule='simultaneous')
]

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
