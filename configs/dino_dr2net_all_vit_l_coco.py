# Dr²Net-all with a deep backbone: DINO-4scale with a reversible Dr²Net ViT-L/16 (its 48 residual
# branches as one Dr²Net stage, global attention), ViTDet's simple feature pyramid, a reversible
# deformable encoder and a checkpointed decoder. Same detector, state dict (plus the alpha/beta
# buffers), MAE checkpoint and schedule as dino_vit_l_coco.py; baseline: dino_vit_l_cp_all_coco.py.
# AlphaBetaHook moves the backbone and the encoder together from (1, 0.1) to (0.3, 0.7).
_base_ = './dino_vit_l_coco.py'

# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

model = dict(
    type='Dr2NetDINO',
    backbone=dict(
        type='Dr2NetViT',
        _delete_=True,
        arch='vit_large_patch16_224',
        img_size=224,
        out_indices=(23, ),
        final_norm=False,
        drop_path_rate=0.4,
        alpha=1.0,
        beta=0.1,
        reversible=True,
        stream_dtype='exact',  # bit-exact rebuilds at any (α, β) (docs/precision.md)
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.mae_checkpoint}})),
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
