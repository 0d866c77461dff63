# The video demo with Video Swin: Recognizer3D + Dr2NetSwin3D on the generated clips of a shape
# standing still, moving slowly, moving fast or blinking (data/demo_clips, made by
# `python -m dr2net_mm.demo.clips`), 8-frame 64x64 clips, a schedule that runs on 2 CPU cores in a
# few minutes. Same recognizer as ../video_dr2net_swin_t_k400.py, narrowed for CPU speed (48 wide,
# depths 2-2-2-2, a 4x4x4 window): the backbone starts from a 2D Swin in the official release layout,
# inflated to 3D as mmaction2 does (a random stand-in for the ImageNet file: nothing can be
# downloaded). Started from random weights, Video Swin barely learns this task in the demo's
# budget (top-1 0.359 against chance 0.25; docs/video.md); `tools/demo_video.py --backbones vit
# swin` runs it.
_base_ = '../video_dr2net_swin_t_k400.py'

data_root = 'data/demo_clips/'
num_classes = 4  # dr2net_mm.demo.clips.DEMO_ACTIONS
max_epochs = 12  # 128 iterations each
# written by tools/demo_video.py (dr2net_mm.demo.data.write_swin_official_checkpoint)
demo_pretrained = data_root + 'swin_48x2222_official_random.pth'
arch = dict(embed_dims=48, depths=[2, 2, 2, 2], num_heads=[2, 4, 8, 16])

model = dict(
    # _delete_: the base's arch is a name ('tiny'); this one is a dict of its own
    backbone=dict(arch=dict(_delete_=True, **arch), pretrained=demo_pretrained, pretrained2d=True,
                  window_size=(4, 4, 4)),
    cls_head=dict(num_classes=num_classes, in_channels=8 * arch['embed_dims']))

clip = dict(clip_len=8, frame_interval=2, num_clips=1)
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', **clip),
    dict(type='DecordDecode'),
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
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=3e-4),
                     paramwise_cfg=dict(backbone=dict(lr_mult=1.0)))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=0, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=64),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=max_epochs // 2,
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time
