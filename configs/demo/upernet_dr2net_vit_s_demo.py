# The segmentation demo with the ViT-S backbone: the data, heads and schedule of
# upernet_dr2net_swin_t_demo.py with the backbone of ../upernet_dr2net_vit_s_ade20k.py (Dr²Net ViT-S
# from an MAE-layout checkpoint, MultiLevelNeck). 128x128 crops: 8x8 patch tokens.
_base_ = './upernet_dr2net_swin_t_demo.py'

demo_pretrained = 'data/demo_ade20k/vit_small_mae_random.pth'  # written by tools/demo_seg.py
model = dict(
    backbone=dict(
        _delete_=True,
        type='Dr2NetViT',
        arch='vit_small_patch16_224',
        img_size=128,
        out_indices=(2, 5, 8, 11),
        final_norm=False,
        drop_path_rate=0.1,
        norm_eps=1e-6,
        pos_embed_interp='bicubic',
        pos_embed_antialias=False,
        alpha=1.0,
        beta=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=demo_pretrained)),
    neck=dict(type='MultiLevelNeck', in_channels=[384] * 4, out_channels=128,
              scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[128] * 4),
    auxiliary_head=dict(in_channels=128, in_index=3))

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
