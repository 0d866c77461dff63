# Dr²Net-all: DINO-4scale with a reversible Dr²Net Swin-T backbone, a reversible deformable encoder
# (its 12 post-norm sub-layers as one Dr²Net stage) and a lean decoder (every layer recomputed in
# backward). Same detector, state dict (plus the alpha/beta buffers), checkpoint and schedule as
# dino_dr2net_swin_t_coco.py (the paper's recipe: backbone only); AlphaBetaHook, inherited from it,
# moves backbone and encoder together from (1, 0.1) to (0.3, 0.7). docs/detection.md, Dr²Net-all.
_base_ = './dino_dr2net_swin_t_coco.py'

model = dict(
    type='Dr2NetDINO',
    encoder=dict(
        mode='reversible',
        alpha=1.0,
        beta=0.1,
        reversible=True,
        stream_dtype='exact'),  # bit-exact rebuilds at any (α, β), as the backbone's
    decoder=dict(mode='checkpoint'))

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
