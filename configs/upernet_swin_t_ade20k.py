# UPerNet with mmseg's SwinTransformer-T on ADE20K, 512x512 crops, 160k iterations: the conventional
# baseline of upernet_dr2net_swin_t_ade20k.py (mmseg's own recipe, unchanged; 44.4 mIoU in mmseg's
# model zoo). Side-by-side: tools/train.py on both configs, tools/benchmark.py seg for memory.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

# TensorBoard (pip install 'dr2net_mm[tensorboard]'): add to tools/train.py
#   --cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend
# (logs alpha, beta, reconstruction_error, reconstruction_error_log10, skipped_steps; then
# tensorboard --logdir WORK_DIR). In a config: visualizer = dict(vis_backends=[
# dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]).
