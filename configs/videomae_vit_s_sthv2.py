# VideoMAE ViT-S action recognition on Something-Something-v2, the paper's action-recognition task
# (Tab. 1/2): mmaction2's VideoMAE recognizer (Recognizer3D, TimeSformerHead, its Kinetics test
# pipeline) at ViT-S width, finetuned from a VideoMAE self-supervised ViT-S with 16x224x224 clips
# -- the conventional baseline of videomae_dr2net_vit_s_sthv2.py. The backbone is PlainVideoViT:
# mmaction2's VisionTransformer computation (same state dict) that can also checkpoint its blocks
# (mmaction2's own has no with_cp). mmaction2 ships VideoMAE configs for testing only, so the
# training part follows VideoMAE's SSv2 recipe (AdamW, lr 1e-3 at batch 256, weight decay 0.05,
# drop path 0.1, 5 warm-up epochs of 40, AMP), without its layer-wise lr decay and mixup.
_base_ = 'mmaction::recognition/videomae/vit-base-p16_videomae-k400-pre_16x4x1_kinetics-400.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', interval=5, max_keep_ckpts=3),
    logger=dict(interval=100))

# VideoMAE's self-supervised ViT-S (official release, converted on loading; see docs/video.md)
pretrained = 'checkpoints/videomae_vit_s_sthv2_pretrain_800e.pth'
model = dict(
    backbone=dict(
        type='PlainVideoViT',
        embed_dims=384,
        depth=12,
        num_heads=6,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    cls_head=dict(num_classes=174, in_channels=384))

dataset_type = 'VideoDataset'
data_root = 'data/sthv2/videos'
ann_file_train = 'data/sthv2/sthv2_train_list_videos.txt'
ann_file_val = 'data/sthv2/sthv2_val_list_videos.txt'
# Something-Something-v2 labels depend on left/right: no horizontal flip
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=16),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 256)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
val_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=16, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='CenterCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=16, num_clips=2, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='ThreeCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root),
        pipeline=val_pipeline,
        test_mode=True))
test_dataloader = dict(
    dataset=dict(
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root),
        pipeline=test_pipeline))
val_evaluator = dict(type='AccMetric')

max_epochs = 40
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1, val_interval=5)
val_cfg = dict(type='ValLoop')
base_lr = 1e-3 * 64 / 256  # VideoMAE's lr at batch 256, scaled to 8 GPUs x 8 clips
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 5, eta_min=1e-6, by_epoch=True, begin=5,
         end=max_epochs, convert_to_iter_based=True)
]
auto_scale_lr = dict(enable=False, base_batch_size=64)
