# The point-cloud demo: Pix4Point-style segmentation with a Dr²Net ViT-S on generated S3DIS-layout
# rooms (data/demo_s3dis, written by `python -m dr2net_mm.demo.rooms`: 2 rooms in each of
# Areas 1-4 and 6 for training, 3 rooms of Area 5 for validation) with a randomly initialised ViT-S in
# the MAE release layout standing in for the pretrained weights. Same model and pipeline as
# ../pix4point_dr2net_vit_s_s3dis.py with small crops, few tokens and a short schedule for a CPU.
_base_ = '../pix4point_dr2net_vit_s_s3dis.py'

data_root = 'data/demo_s3dis/'
voxel_size = 0.08
crop_points = 2048
num_tokens = 64
max_iters = 240
demo_pretrained = data_root + 'vit_small_patch16_224_mae_random.pth'

model = dict(
    backbone=dict(drop_path_rate=0.0, init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    num_tokens=num_tokens, group_size=16, dropout=0.0, label_smoothing=0.0,
    test_cfg=dict(crop_points=crop_points, crop_batch=4))

train_pipeline = [
    dict(type='PointGridSample', voxel_size=voxel_size),
    dict(type='PointNormalize'),
    dict(type='PointRandomRotateZ'),
    dict(type='PointRandomScale', scale=(0.9, 1.1)),
    dict(type='PointJitter', sigma=0.005, clip=0.02),
    # no PointColorDrop: in the generated rooms windows, doors and boards differ from the wall they
    # are on mainly by colour, too little geometry to learn them without it in 240 iterations
    dict(type='PointRandomCrop', num_points=crop_points),
    dict(type='PackPointInputs'),
]
test_pipeline = [
    dict(type='PointNormalize'),
    dict(type='PointVoteSubsets', voxel_size=voxel_size, num_votes=2),
    dict(type='PackPointInputs'),
]
rooms = dict(type='S3DISDataset', data_root=data_root, data_prefix=dict(rooms=''))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(_delete_=True, **rooms, areas=(1, 2, 3, 4, 6), pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(**rooms, areas=(5, ), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=15),
    dict(type='CosineAnnealingLR', T_max=max_iters - 15, eta_min=1e-5, by_epoch=False, begin=15,
         end=max_iters)
]
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_iter=max_iters // 2,
         interval=5)
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
