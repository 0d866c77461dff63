# The embedded demo: DINO + Dr²Net Swin-T on the generated shapes set (data/demo_coco, made by
# `python -m dr2net_mm.demo.data`), 160x160 images, a schedule that runs on 2 CPU cores.
# Same detector as ../dino_dr2net_swin_t_coco.py, with fewer queries for CPU speed.
_base_ = '../dino_dr2net_swin_t_coco.py'

data_root = 'data/demo_coco/'
classes = ('square', 'disk', 'triangle')
image_size = (160, 160)
max_epochs = 10
demo_pretrained = data_root + 'swin_tiny_official_random.pth'  # written by the demo generator

model = dict(
    num_queries=100,
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    bbox_head=dict(num_classes=len(classes)),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
loader = dict(batch_size=2, num_workers=0, persistent_workers=False)  # 2 CPU cores: no workers
data = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    **loader,
    dataset=dict(**data, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    **loader,
    dataset=dict(**data, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=max_epochs)]
optim_wrapper = dict(optimizer=dict(lr=2e-4))
default_hooks = dict(
    logger=dict(interval=4),
    checkpoint=dict(interval=1, max_keep_ckpts=2))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=5, interval=2)
]
randomness = dict(seed=0)  # the same demo run every time (same data order, flips and masks)

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
