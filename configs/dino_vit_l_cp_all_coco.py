# The strongest checkpointing baseline of dino_dr2net_all_vit_l_coco.py (no reversibility): DINO with
# ViT-L/16 whose 24 blocks are each recomputed in backward (PlainViT with_cp=True: timm's
# set_grad_checkpointing), and every encoder and decoder layer too (Dr2NetDINO modes,
# torch.utils.checkpoint non-reentrant: DDP-safe, no fairscale). Same detector, state dict and
# schedule as dino_vit_l_coco.py (docs/detection.md).
_base_ = './dino_vit_l_coco.py'

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
