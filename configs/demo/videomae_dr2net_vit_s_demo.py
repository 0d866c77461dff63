# The video demo with a VideoMAE-layout video ViT: Recognizer3D + Dr2NetVideoViT on the generated
# clips of a shape standing still, moving slowly, moving fast or blinking (data/demo_clips, made by
# `python -m dr2net_mm.demo.clips`), 8-frame 64x64 clips, a schedule that runs on 2 CPU cores in a
# few minutes. Same recognizer as ../videomae_dr2net_vit_s_sthv2.py, narrowed for CPU speed (192
# wide, 4 blocks, 3 heads); the backbone starts from a random stand-in for the VideoMAE
# self-supervised encoder in the official pretraining layout, converted on loading (nothing can be
# downloaded).
_base_ = '../videomae_dr2net_vit_s_sthv2.py'

data_root = 'data/demo_clips/'
num_classes = 4  # dr2net_mm.demo.clips.DEMO_ACTIONS
max_epochs = 20  # 128 iterations each
# written by tools/demo_video.py (dr2net_mm.demo.data.write_videomae_official_checkpoint)
demo_pretrained = data_root + 'videomae_vit_192x4_official_random.pth'
arch = dict(embed_dims=192, depth=4, num_heads=3)

model = dict(
    backbone=dict(**arch, img_size=64, num_frames=8,
                  init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    cls_head=dict(num_classes=num_classes, in_channels=arch['embed_dims']))

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
    batch_size=16, **workers,
    dataset=dict(ann_file=data_root + 'val_list.txt', data_prefix=dict(video=data_root),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_begin=max_epochs, val_interval=max_epochs)
# fp32 (AMP needs a GPU)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=3e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-6, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=64),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=max_epochs // 2,
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time
