# Referring video object segmentation on A2D-Sentences, MTTR-style (Botach et al., CVPR 2022): a
# Kinetics-400 Video Swin-T over an 8-frame clip centred on each annotated frame (temporal patch 1,
# as MTTR), a frozen RoBERTa-base text encoder, a multimodal DETR-style transformer (50 queries,
# 3 + 3 layers), an FPN mask decoder and Hungarian-matched mask focal + dice and referred-object
# losses; mask mAP@0.5:0.95, overall and mean IoU. The conventional baseline of
# rvos_dr2net_swin_t_a2d.py; rvos_swin_t_cp_a2d.py (with_cp) and rvos_swin_t_frozen_a2d.py (frozen
# backbone) are the other rows of the paper's Table 2. Data layout and the RoBERTa files:
# docs/rvos.md. Resolution and schedule follow MTTR where it gives them, otherwise this project's.
_base_ = 'mmaction::_base_/default_runtime.py'

custom_imports = dict(imports=['dr2net_mm', 'dr2net_mm.rvos'], allow_failed_imports=False)

clip_len = 8
size = (576, 320)  # (width, height) every clip is resized to
max_epochs = 70
swin_k400 = ('https://download.openmmlab.com/mmaction/v1.0/recognition/swin/'
             'swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb/'
             'swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb_20220930-241016b2.pth')
data_root = 'data/a2d_sentences/'
# RoBERTa-base: its config is fixed here; the weights and tokenizer are local files (docs/rvos.md)
roberta = data_root + 'roberta-base/'

model = dict(
    type='ReferringVideoSegmentor',
    # A Kinetics-400 recognizer checkpoint, its `backbone.` weights loaded by init_cfg's prefix
    # (mmaction2's own `pretrained=` with pretrained2d=False does not strip that prefix and loads
    # nothing from a recognizer file). The temporal patch of 1 (MTTR's) keeps one feature map per
    # frame; the checkpoint's 2-frame patch embedding does not fit it and stays at its
    # initialisation (the loaders warn), everything else loads.
    backbone=dict(type='SwinTransformer3D', arch='tiny', pretrained=None, pretrained2d=False,
                  init_cfg=dict(type='Pretrained', checkpoint=swin_k400, prefix='backbone.'),
                  patch_size=(1, 4, 4), window_size=(8, 7, 7), drop_path_rate=0.1,
                  out_indices=(0, 1, 2, 3)),
    text_encoder=dict(
        config=dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, layer_norm_eps=1e-5),
        hf_tokenizer=roberta, weights=roberta + 'pytorch_model.bin', frozen=True),
    transformer=dict(embed_dims=256, num_heads=8, ffn_dims=2048, dropout=0.1, num_queries=50,
                     num_encoder_layers=3, num_decoder_layers=3),
    mask_decoder=dict(mask_dims=8, fpn_dims=256, groups=8),
    criterion=dict(referred_weight=2.0, focal_weight=2.0, dice_weight=5.0,
                   not_referred_weight=0.1),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], format_shape='NCTHW'))

dataset_type = 'A2DSentencesDataset'
data = dict(type=dataset_type, data_root=data_root,
            ann_file='text_annotations/a2d_annotation.txt', videoset_file='Release/videoset.csv',
            data_prefix=dict(video='Release/clips320H', masks='a2d_annotation_with_instances'))
train_pipeline = [
    dict(type='DecodeReferringClip', clip_len=clip_len, frame_interval=1),
    dict(type='ResizeReferringClip', scale=size),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackReferringInputs')
]
test_pipeline = train_pipeline
train_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(**data, subset='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**data, subset='test', pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='ReferringSegmentationMetric')
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# MTTR: AdamW, lr 1e-4, backbone 5e-5, weight decay 1e-4, gradient clipping 0.1, step decay
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=0.5))),
    clip_grad=dict(max_norm=0.1))
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=True, milestones=[50], gamma=0.4)
]
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2,
                                     save_best='rvos/mAP', rule='greater'))
auto_scale_lr = dict(enable=False, base_batch_size=6)
