# Pix4Point-style semantic segmentation of S3DIS (train Areas 1-4 and 6, validate on Area 5) with an
# MAE-pretrained ViT-S run as a Dr²Net (reversible) backbone. The paper (Zhao et al., CVPR 2024,
# Table 3): 68.1 mIoU at 15.6 GB (Dr²Net) vs 69.6 at 22.5 GB (conventional end to end).
#
# Data: data/s3dis/s3disfull/raw/Area_{k}_{room}.npy, float (N, 7) x y z r g b label (docs/s3dis.md;
# `python -m dr2net_mm.points convert RAW_DIR data/s3dis/s3disfull/raw`).
# Weights: an MAE ViT-S/16 in timm layout (the MAE release format {'model': ...} loads as is) at
# data/pretrained/mae_vit_small_patch16.pth; the image patch embedding is not used for points.
#
# Recipe (PointNeXt's S3DIS defaults where Pix4Point follows them: 0.04 m voxels, 24000-point crops,
# 30 crops per room and epoch, 100 epochs, AdamW, cosine schedule, label smoothing 0.2, gradient
# clipping 10; ViT-S with drop path 0.1; 1/16 of the points as tokens with 32 neighbours each as
# Pix4Point's sample_ratio 0.0625 / group_size 32). Our tokenizer and decoder are simpler than
# Pix4Point's (see dr2net_mm/points/segmentor.py), so expect numbers near, not equal to, the paper's.
custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

data_root = 'data/s3dis/s3disfull/'
pretrained = 'data/pretrained/mae_vit_small_patch16.pth'
voxel_size = 0.04
crop_points = 24000
num_tokens = 1536  # 24000 / 16
max_epochs = 100

model = dict(
    type='Pix4PointSegmentor',
    backbone=dict(
        type='Dr2NetViT', arch='vit_small_patch16_224', drop_path_rate=0.1, alpha=1.0, beta=0.1,
        stream_dtype='exact',  # bit-exact; one segment is precise at (1, 0.1): docs/precision.md
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    num_classes=13,
    in_channels=4,  # r g b / 255 and height above the floor
    num_tokens=num_tokens,
    group_size=32,
    tokenizer_dims=128,
    out_indices=(3, 7, 11),
    prefix_tokens=True,
    decoder_dims=256,
    skip_dims=64,
    head_dims=256,
    dropout=0.5,
    ignore_index=255,
    label_smoothing=0.2,
    test_cfg=dict(crop_points=crop_points, crop_batch=4))

train_pipeline = [
    dict(type='PointGridSample', voxel_size=voxel_size),
    dict(type='PointNormalize'),
    dict(type='PointRandomRotateZ'),
    dict(type='PointRandomScale', scale=(0.9, 1.1)),
    dict(type='PointJitter', sigma=0.005, clip=0.02),
    dict(type='PointColorDrop', prob=0.2),
    dict(type='PointRandomCrop', num_points=crop_points),
    dict(type='PackPointInputs'),
]
test_pipeline = [  # whole rooms: every original point gets a label
    dict(type='PointNormalize'),
    dict(type='PointVoteSubsets', voxel_size=voxel_size, num_votes=1),
    dict(type='PackPointInputs'),
]
rooms = dict(type='S3DISDataset', data_root=data_root, data_prefix=dict(rooms='raw/'))
train_dataloader = dict(
    batch_size=8, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='RepeatDataset', times=30,
                 dataset=dict(**rooms, areas=(1, 2, 3, 4, 6), pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**rooms, areas=(5, ), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PointSegMetric', ignore_index=255)
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'backbone.cls_token': dict(decay_mult=0.0),
                                    'backbone.pos_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-6, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True)
]

# (α, β) from (1, 0.1) (close to the pretrained network) to the paper's example end point (0.3, 0.7)
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=30, interval=100)
]

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=10, max_keep_ckpts=3, save_best='points/mIoU',
                    rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
