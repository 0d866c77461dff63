# Video Swin-T action recognition on Kinetics-400: mmaction2's recipe as it is (ImageNet Swin-T
# inflated to 3D, 32x2x1 clips at 224x224, AMP, 30 epochs) -- the conventional baseline of
# video_dr2net_swin_t_k400.py. `import dr2net_mm` is needed even here: the mmaction2 1.2.0 wheel
# cannot import its models without it (dr2net_mm/mmaction_compat.py).
_base_ = 'mmaction::recognition/swin/swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)
# crash-safe checkpoints that also carry the random states (exact resume; docs/reliability.md)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
