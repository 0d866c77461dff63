# The RVOS demo: ReferringVideoSegmentor + Dr2NetSwin3D on the generated shapes set
# (data/demo_rvos, made by `python -m dr2net_mm.rvos.demo_data`: 24-frame 64x64 videos of 2-3
# moving shapes, sentences such as "the red square moving left", A2D-Sentences layout). Same model
# as ../rvos_dr2net_swin_t_a2d.py, narrowed for CPU speed: a Video Swin 32 wide with three stages
# (depths 2-2-2; at 64x64 a fourth would leave the transformer 2x2 tokens a frame, too few to tell
# the shapes apart: the demo learned far less with it), a 4x4x4 window, random weights (nothing
# can be downloaded); a small random RoBERTa over the set's word vocabulary, trained; 8 queries,
# 2 + 2 transformer layers; 8-frame clips at 64x64.
_base_ = '../rvos_dr2net_swin_t_a2d.py'

data_root = 'data/demo_rvos/'
max_epochs = 3
arch = dict(embed_dims=32, depths=[2, 2, 2], num_heads=[1, 2, 4])

model = dict(
    # random weights: mmaction2's default initialisation instead of the base's checkpoint
    backbone=dict(arch=dict(_delete_=True, **arch), out_indices=(0, 1, 2), window_size=(4, 4, 4),
                  drop_path_rate=0.0,
                  init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
                            dict(type='Constant', layer='LayerNorm', val=1., bias=0.)]),
    text_encoder=dict(
        _delete_=True,
        config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128),
        vocab_file=data_root + 'text_annotations/vocab.json', frozen=False),
    transformer=dict(embed_dims=64, num_heads=4, ffn_dims=128, dropout=0.0, num_queries=8,
                     num_encoder_layers=2, num_decoder_layers=2),
    mask_decoder=dict(mask_dims=16, fpn_dims=64, groups=4))

pipeline = [
    dict(type='DecodeReferringClip', clip_len=8, frame_interval=1),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackReferringInputs')
]
workers = dict(num_workers=0, persistent_workers=False)  # 2 CPU cores: no workers
train_dataloader = dict(batch_size=4, **workers,
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=8, **workers, dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_begin=max_epochs, val_interval=max_epochs)
# fp32 (AMP needs a GPU); the random backbone learns at the head's rate
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=1e-3, weight_decay=1e-4),
                     paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0))),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None))
custom_hooks = [
    dict(type='AlphaBetaHook', start=(1.0, 0.1), end=(0.3, 0.7), end_epoch=max(max_epochs // 2, 1),
         interval=2)
]
randomness = dict(seed=0)  # the same demo run every time
