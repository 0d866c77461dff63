# The embedded demo with Dr²Net-all: the reversible Dr²Net Swin-T backbone, a reversible deformable
# encoder and a checkpointed decoder (as ../dino_dr2net_all_swin_t_coco.py), on the generated shapes
# set of dino_dr2net_swin_t_demo.py (same data, schedule and AlphaBetaHook, which drives the
# backbone and the encoder together).
_base_ = './dino_dr2net_swin_t_demo.py'

model = dict(
    type='Dr2NetDINO',
    encoder=dict(mode='reversible', alpha=1.0, beta=0.1, reversible=True, stream_dtype='exact'),
    decoder=dict(mode='checkpoint'))
