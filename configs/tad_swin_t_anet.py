# Temporal action detection on ActivityNet-v1.3, end to end: a Kinetics-400 Video Swin-T over the
# whole video (resampled to 512 frames of 160x160, whole video -> fixed-length sequence as in the
# paper), spatial pooling, an ActionFormer-style anchor-free head (docs/tad.md says why not VSGN),
# ActivityNet detection mAP at tIoU 0.5:0.05:0.95. The conventional baseline of
# tad_dr2net_swin_t_anet.py; tad_swin_t_cp_anet.py (with_cp) and tad_swin_t_frozen_anet.py (frozen
# backbone) are the other rows of the paper's Table 2. Frame count, resolution and schedule are this
# project's choice (the paper gives none); the data layout is docs/tad.md's.
_base_ = 'mmaction::_base_/default_runtime.py'

custom_imports = dict(imports=['dr2net_mm', 'dr2net_mm.tad'], allow_failed_imports=False)

num_frames = 512  # T: every video resampled to this many frames
size = 160
num_classes = 200
max_epochs = 15
swin_k400 = ('https://download.openmmlab.com/mmaction/v1.0/recognition/swin/'
             'swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb/'
             'swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb_20220930-241016b2.pth')

model = dict(
    type='TemporalActionDetector',
    # a Kinetics-400 recognizer checkpoint: its `backbone.` weights load into the backbone through
    # init_cfg's prefix (mmaction2's `pretrained=` with pretrained2d=False keeps the prefix and
    # loads nothing from a recognizer file)
    backbone=dict(type='SwinTransformer3D', arch='tiny', pretrained=None, pretrained2d=False,
                  init_cfg=dict(type='Pretrained', checkpoint=swin_k400, prefix='backbone.'),
                  patch_size=(2, 4, 4), window_size=(8, 7, 7), drop_path_rate=0.1),
    head=dict(type='ActionFormerHead', num_classes=num_classes, in_channels=768,
              feat_channels=256, num_levels=6, center_sample_radius=1.5,
              test_cfg=dict(score_thr=1e-3, pre_nms_topk=2000, nms_sigma=0.5, max_per_video=100)),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], format_shape='NCTHW'))

data_root = 'data/ActivityNet/'
ann_file = data_root + 'activity_net.v1-3.min.json'
videos = dict(video=data_root + 'videos/')
dataset_type = 'ActivityNetTADDataset'
train_pipeline = [
    dict(type='DecodeWholeVideo', num_frames=num_frames),
    dict(type='Resize', scale=(-1, size)),
    dict(type='RandomCrop', size=size),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackTADInputs')
]
test_pipeline = [
    dict(type='DecodeWholeVideo', num_frames=num_frames),
    dict(type='Resize', scale=(-1, size)),
    dict(type='CenterCrop', crop_size=size),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackTADInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, ann_file=ann_file, subset='training', filename_tmpl='v_{}.mp4',
                 data_prefix=videos, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, ann_file=ann_file, subset='validation',
                 filename_tmpl='v_{}.mp4', data_prefix=videos, pipeline=test_pipeline,
                 test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='ActivityNetDetectionMetric')
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=0.1))),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=0, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True)
]
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2,
                                     save_best='tad/mAP', rule='greater'))
auto_scale_lr = dict(enable=False, base_batch_size=16)
