# The ViT-S UPerNet baseline with activation checkpointing in every transformer layer (mmseg
# `with_cp=True`): the memory peer a user would otherwise pick.
_base_ = './upernet_vit_s_ade20k.py'

model = dict(backbone=dict(with_cp=True))

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
