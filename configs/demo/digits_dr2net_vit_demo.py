# Finetuning a pretrained tiny ViT as Dr²Net on real data: scikit-learn's bundled handwritten digits
# (downstream task: classify 5-9 from 30 images per class). The Dr²Net row of `make reproduce`
# (tools/reproduce.py), which writes the pretrained checkpoint (timm layout, digits 0-4) and derives
# its other rows (frozen, conventional, with_cp, from scratch, hard finetune, vanilla) from this file.
custom_imports = dict(imports=['dr2net_mm', 'dr2net_mm.demo.digits'], allow_failed_imports=False)

pretrained = 'work_dirs/reproduce/vit_digits04_timm.pth'  # written by tools/reproduce.py
max_iters = 600

model = dict(
    type='DigitClassifier',
    num_classes=5,
    backbone=dict(type='Dr2NetViT', arch=None, img_size=8, patch_size=2, in_channels=1,
                  embed_dims=64, depth=4, num_heads=4, alpha=1.0, beta=0.1, reversible=True,
                  stream_dtype='exact',
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
custom_hooks = [dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_iter=max_iters // 2,
                     interval=10)]

train_dataloader = dict(batch_size=32, num_workers=0, dataset=dict(type='DigitsDataset', split='target_train'),
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        collate_fn=dict(type='default_collate'))
test_dataloader = dict(batch_size=256, num_workers=0, dataset=dict(type='DigitsDataset', split='target_test'),
                       sampler=dict(type='DefaultSampler', shuffle=False),
                       collate_fn=dict(type='default_collate'))
test_evaluator = dict(type='DigitAccuracy')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
                   dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=max_iters)]

default_hooks = dict(logger=dict(type='LoggerHook', interval=50), checkpoint=None)
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
log_level = 'WARNING'
