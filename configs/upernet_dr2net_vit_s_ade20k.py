# UPerNet with a reversible Dr²Net ViT-S backbone on ADE20K: mmseg's ViT-S + MultiLevelNeck + UPerHead
# recipe with the backbone swapped to Dr2NetViT (timm's ViT-S blocks run as one reversible stage),
# initialised from a self-supervised MAE ViT-S checkpoint (the paper's self-supervised case).
# Baseline: upernet_vit_s_ade20k.py. Outputs of blocks 3, 6, 9, 12 feed the neck, as mmseg's ViT.
_base_ = 'mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

# MAE's release layout ({'model': timm-style state dict}); its decoder and mask token are dropped on
# loading. Any timm / DeiT / mmseg / mmpretrain ViT-S checkpoint works as well.
mae_checkpoint = 'pretrain/mae_pretrain_vit_small.pth'

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='Dr2NetViT',
        arch='vit_small_patch16_224',
        img_size=512,  # position embedding stored on the 32x32 grid, as mmseg's ViT (img_size 512)
        out_indices=(2, 5, 8, 11),
        final_norm=False,  # as the mmseg recipe
        drop_path_rate=0.1,
        norm_eps=1e-6,
        pos_embed_interp='bicubic',
        pos_embed_antialias=False,  # mmseg's resampling for inputs of other sizes
        alpha=1.0,
        beta=0.1,
        reversible=True,
        # exact streams: bit-exact rebuilds, fp32-autograd precision at (1, 0.1) in one segment
        # (docs/precision.md)
        stream_dtype='exact',
        init_cfg=dict(type='Pretrained', checkpoint=mae_checkpoint)))

custom_hooks = [
    dict(
        type='AlphaBetaHook',
        start=(1.0, 0.1),
        end=(0.3, 0.7),
        end_iter=80000,  # τ: half of the 160k-iteration schedule
        interval=2,
        policy='linear',
        schedule='simultaneous')
]

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
