# The video demo: Recognizer3D + Dr²Net Video Swin-T on the generated clips of a shape moving left,
# right, up or down (data/demo_clips, made by `python -m dr2net_mm.demo.clips`), 8-frame 64x64
# clips, a schedule that runs on 2 CPU cores in a few minutes. Same recognizer as
# ../video_dr2net_swin_t_k400.py: the backbone starts from a 2D Swin-T in the official release
# layout, inflated to 3D as mmaction2 does (a random stand-in for the ImageNet file: nothing can be
# downloaded), with a 4x4x4 window for the small clips and the 4 demo classes.
_base_ = '../video_dr2net_swin_t_k400.py'

data_root = 'data/demo_clips/'
num_classes = 4  # dr2net_mm.demo.clips.DEMO_ACTIONS
max_epochs = 20  # 12 iterations each
demo_pretrained = data_root + 'swin_tiny_official_random.pth'  # written by tools/demo_video.py

model = dict(
    backbone=dict(pretrained=demo_pretrained, pretrained2d=True, window_size=(4, 4, 4)),
    cls_head=dict(num_classes=num_classes))

clip = dict(clip_len=8, frame_interval=2, num_clips=1)
# The label is the direction of motion: no flip (it would turn left into right).
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', **clip),
    dict(type='DecordDecode'),
    dict(type='RandomResizedCrop', area_range=(0.6, 1.0)),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', **clip, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
workers = dict(num_workers=0, persistent_workers=False)  # 2 CPU cores: no workers
train_dataloader = dict(
    batch_size=8, **workers,
    dataset=dict(ann_file=data_root + 'train_list.txt', data_prefix=dict(video=data_root),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, **workers,
    dataset=dict(ann_file=data_root + 'val_list.txt', data_prefix=dict(video=data_root),
                 pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=8, **workers,
    dataset=dict(ann_file=data_root + 'val_list.txt', data_prefix=dict(video=data_root),
                 pipeline=test_pipeline))

train_cfg = dict(max_epochs=max_epochs, val_begin=max_epochs, val_interval=max_epochs)
# fp32 (AMP needs a GPU); the stand-in backbone is not pretrained, so it learns at the head's rate
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3),
                     paramwise_cfg=dict(backbone=dict(lr_mult=1.0)))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 2, eta_min=0, by_epoch=True, begin=2,
         end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=12),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=max_epochs // 2,
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time
