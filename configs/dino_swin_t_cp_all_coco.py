# The strongest checkpointing baseline (no reversibility): DINO-4scale Swin-T with every Swin block
# (mmdet `with_cp=True`), every encoder layer and every decoder layer recomputed in backward
# (torch.utils.checkpoint, non-reentrant: DDP-safe, no fairscale). Same detector, state dict and
# schedule as dino_swin_t_coco.py; Dr2NetDINO selects the encoder/decoder (docs/detection.md).
_base_ = './dino_swin_t_coco.py'

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
