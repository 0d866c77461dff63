# UPerNet with mmseg's VisionTransformer-S (MultiLevelNeck) on ADE20K, 512x512 crops, 160k
# iterations: the conventional baseline of upernet_dr2net_vit_s_ade20k.py. mmseg's ViT reads
# checkpoints in its own layout: convert MAE / timm weights with mmseg's
# tools/model_converters/vit2mmseg.py (Dr2NetViT reads the timm layout directly).
_base_ = 'mmseg::vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py'

model = dict(pretrained='pretrain/mae_pretrain_vit_small_mmseg.pth')

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
