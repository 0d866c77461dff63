# DINO-4scale with a ViT-L/16 backbone on COCO at ViTDet's training size (1024×1024 large-scale
# jitter): the conventional baseline of dino_dr2net_all_vit_l_coco.py. The backbone is timm's
# ViT-L/16 blocks run as timm runs them (PlainViT, global attention in every block as the paper's
# ViT; ViTDet's windowed attention and relative positions are not used); the neck is ViTDet's simple
# feature pyramid (SimpleFeaturePyramid: strides 8, 16, 32 from the last block's stride-16 map,
# plus a max-pooled stride-64 level), which gives DINO its 4 levels of 256 channels.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

# MAE's ViT-L release ({'model': timm-style state dict}; decoder and mask token dropped on loading),
# as ViTDet; any timm / DeiT / mmpretrain ViT-L/16 checkpoint loads too.
mae_checkpoint = 'pretrain/mae_pretrain_vit_large.pth'
image_size = (1024, 1024)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PlainViT',
        arch='vit_large_patch16_224',
        img_size=224,  # pos_embed stays on the checkpoint's 14×14 grid, resampled to 64×64
        out_indices=(23, ),
        final_norm=False,  # ViTDet feeds the last block's tokens to the pyramid
        drop_path_rate=0.4,  # ViTDet's ViT-L
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=mae_checkpoint)),
    neck=dict(
        _delete_=True,
        type='SimpleFeaturePyramid',
        in_channels=1024,
        out_channels=256,
        scale_factors=(2.0, 1.0, 0.5),
        top_pool=True),
    # the batch is padded to a multiple of 32 (not to 1024² as ViTDet: the position embedding is
    # resampled to any patch grid)
    data_preprocessor=dict(pad_size_divisor=32))

# ViTDet's large-scale jitter at 1024×1024
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
