# The conventional baseline of ./pix4point_dr2net_vit_s_s3dis.py: the same segmentor, data and
# schedule with the ViT-S run as timm runs it (PlainViT: ordinary autograd, float32 activations), so
# (α, β) are fixed at (1, 0) and there is no AlphaBetaHook.
_base_ = './pix4point_dr2net_vit_s_s3dis.py'

model = dict(backbone=dict(_delete_=True, type='PlainViT', arch='vit_small_patch16_224',
                           drop_path_rate=0.1,
                           init_cfg=dict(type='Pretrained', checkpoint={{_base_.pretrained}})))
custom_hooks = []

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
