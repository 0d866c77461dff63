# The mmdet zoo's DINO-5scale Swin-L (dino-5scale_swin-l_8xb2-12e_coco.py, which already
# checkpoints every Swin block, with_cp=True) with every encoder and decoder layer checkpointed as
# well (Dr2NetDINO modes; torch.utils.checkpoint, non-reentrant: DDP-safe, no fairscale): the
# strongest checkpointing baseline of dino_dr2net_all_swin_l_coco.py. Same detector, state dict and
# schedule as the zoo config (docs/detection.md).
_base_ = 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

model = dict(
    type='Dr2NetDINO',
    backbone=dict(with_cp=True),
    encoder=dict(mode='checkpoint'),
    decoder=dict(mode='checkpoint'))

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
