# The Swin-T UPerNet baseline with the leanest checkpointing at hand: every Swin block checkpointed
# (mmseg `with_cp=True`) and the UPerNet head's stages recomputed in backward (LeanUPerHead: same
# modules and state dict as UPerHead, same outputs; dr2net_mm/models/lean_head.py). The memory peer
# of upernet_dr2net_swin_t_lean_ade20k.py; docs/memory_report.md has both measured.
_base_ = './upernet_swin_t_cp_ade20k.py'

custom_imports = dict(imports=['dr2net_mm'], allow_failed_imports=False)

model = dict(decode_head=dict(type='LeanUPerHead'))
