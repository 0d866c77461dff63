# UPerNet with a reversible Dr²Net Swin-T backbone and a lean head: upernet_dr2net_swin_t_ade20k.py
# (same recipe, checkpoint, AlphaBetaHook) with the UPerNet head's stages recomputed in backward
# (LeanUPerHead: same modules and state dict as UPerHead, same outputs;
# dr2net_mm/models/lean_head.py). Baselines: upernet_swin_t_ade20k.py (conventional) and
# upernet_swin_t_cp_lean_ade20k.py (with_cp + lean head); docs/memory_report.md has them measured.
_base_ = './upernet_dr2net_swin_t_ade20k.py'

model = dict(decode_head=dict(type='LeanUPerHead'))
