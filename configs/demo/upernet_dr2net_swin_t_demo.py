# The segmentation demo: UPerNet + Dr²Net Swin-T on the generated ADE20K-layout scenes
# (data/demo_ade20k, made by `python -m dr2net_mm.demo.data --kind ade20k`), 128x128 crops, a short
# schedule that runs on 2 CPU cores. Same segmentor as ../upernet_dr2net_swin_t_ade20k.py, with
# narrower heads for CPU speed and the 5 classes the scenes contain.
_base_ = '../upernet_dr2net_swin_t_ade20k.py'

data_root = 'data/demo_ade20k/'
# ADE20K names (the label PNGs hold ADE20K ids; mmseg maps them to 0..4 and every other id to 255)
classes = ('sky', 'grass', 'building', 'tree', 'car')
palette = [[6, 230, 230], [4, 250, 7], [180, 120, 120], [4, 200, 3], [0, 102, 200]]
crop_size = (128, 128)
max_iters = 240
demo_pretrained = data_root + 'swin_tiny_official_random.pth'  # written by tools/demo_seg.py

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(drop_path_rate=0.1,
                  init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    decode_head=dict(num_classes=len(classes), channels=128),
    auxiliary_head=dict(num_classes=len(classes), channels=64))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
data = dict(data_root=data_root, metainfo=dict(classes=classes, palette=palette))
workers = dict(num_workers=0, persistent_workers=False)  # 2 CPU cores: no workers
train_dataloader = dict(batch_size=4, **workers, dataset=dict(**data, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, **workers, dataset=dict(**data, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=3e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False)
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_iter=max_iters // 2,
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
