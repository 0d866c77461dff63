# The TAD demo with Video Swin: TemporalActionDetector + Dr2NetSwin3D on the generated long videos
# (data/demo_tad, made by `python -m dr2net_mm.tad.demo_data`: 256 frames of 32x32, 1-3 actions of
# 3 motion classes over a scrolling background), each resampled to 128 frames. Same detector as
# ../tad_dr2net_swin_t_anet.py, narrowed for CPU speed (48 wide, depths 2-2-2-2, a 4x4x4 window);
# the backbone starts from a random 2D Swin in the official release layout, inflated to 3D as
# mmaction2 does (a stand-in for the pretrained file: nothing can be downloaded).
_base_ = '../tad_dr2net_swin_t_anet.py'

data_root = 'data/demo_tad/'
num_frames = 128
max_epochs = 16
# written by tools/demo_tad.py (dr2net_mm.demo.data.write_swin_official_checkpoint)
demo_pretrained = data_root + 'swin_48x2222_official_random.pth'
arch = dict(embed_dims=48, depths=[2, 2, 2, 2], num_heads=[2, 4, 8, 16])

model = dict(
    # _delete_: the base's arch is a name ('tiny'); this one is a dict of its own
    backbone=dict(arch=dict(_delete_=True, **arch), pretrained=demo_pretrained, pretrained2d=True,
                  window_size=(4, 4, 4), drop_path_rate=0.0),
    head=dict(num_classes=3, in_channels=8 * arch['embed_dims'], feat_channels=64, num_levels=5))

pipeline = [
    dict(type='DecodeWholeVideo', num_frames=num_frames),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackTADInputs')
]
data = dict(ann_file=data_root + 'annotations.json', filename_tmpl='{}.mp4',
            data_prefix=dict(video=data_root + 'videos/'), pipeline=pipeline)
workers = dict(num_workers=0, persistent_workers=False)  # 2 CPU cores: no workers
train_dataloader = dict(batch_size=4, **workers, dataset=data)
val_dataloader = dict(batch_size=8, **workers, dataset=data)
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_begin=max_epochs, val_interval=max_epochs)
# fp32 (AMP needs a GPU); the stand-in backbone is not pretrained, so it learns at the head's rate
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3),
                     paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-6, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=8),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=max_epochs // 2,
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time
