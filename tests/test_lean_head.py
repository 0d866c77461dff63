"""LeanUPerHead is mmseg's UPerHead recomputed in backward: the same state dict, the same outputs (eval
and training, bitwise), the same gradients and BatchNorm statistics, less kept for backward; and the
two lean-head configs select it on the intended backbones."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.models.decode_heads import UPerHead

from dr2net_mm.core import count_saved_bytes
from dr2net_mm.models import LeanUPerHead

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = [8, 16, 32, 64]
HEAD = dict(in_channels=CHANNELS, in_index=[0, 1, 2, 3], channels=32, num_classes=5,
            dropout_ratio=0.1, norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
            pool_scales=(1, 2, 3, 6))


def heads():
    torch.manual_seed(0)
    plain = UPerHead(**HEAD)
    lean = LeanUPerHead(**HEAD)
    result = lean.load_state_dict(plain.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    return plain, lean


def features(requires_grad=False, size=32):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, size >> i, size >> i, generator=gen).requires_grad_(requires_grad)
            for i, c in enumerate(CHANNELS)]


def test_lean_head_has_upernet_state_dict_keys_and_loads_its_state_dict_strictly():
    plain, lean = heads()
    assert list(lean.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                  lean.state_dict().values()))


def test_lean_head_output_is_bitwise_upernet_in_eval():
    plain, lean = heads()
    plain.eval()
    lean.eval()
    x = features()
    assert torch.equal(lean(x), plain(x))
    assert torch.equal(lean._forward_feature(x), plain._forward_feature(x))


def test_lean_head_trains_like_upernet_same_output_gradients_and_batchnorm_statistics():
    plain, lean = heads()
    plain.train()
    lean.train()
    xp, xl = features(True), features(True)
    torch.manual_seed(3)  # the same dropout mask in cls_seg
    out_plain = plain(xp)
    torch.manual_seed(3)
    out_lean = lean(xl)
    assert torch.equal(out_lean, out_plain)
    weight = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(4))
    (out_plain * weight).sum().backward()
    (out_lean * weight).sum().backward()
    for a, b in zip(xp, xl):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7, msg=name)
    # the backward recomputation re-ran BatchNorm in training mode; the statistics were put back
    for (name, a), b in zip(plain.named_buffers(), lean.buffers()):
        assert torch.equal(a, b), name
    assert int(lean.fpn_bottleneck.bn.num_batches_tracked) == 1


def test_lean_head_keeps_less_than_half_of_upernet_for_backward():
    plain, lean = heads()
    plain.train()
    lean.train()
    saved = {}
    for name, head in (('plain', plain), ('lean', lean)):
        x = features(True, size=64)
        with count_saved_bytes(list(head.parameters()) + x) as counter:
            head(x)
        saved[name] = counter.total
    assert saved['lean'] < 0.5 * saved['plain'], saved


@pytest.mark.parametrize('config, backbone, with_cp', [
    ('upernet_swin_t_cp_lean_ade20k.py', 'SwinTransformer', True),
    ('upernet_dr2net_swin_t_lean_ade20k.py', 'Dr2NetSwin', None),
])
def test_lean_configs_put_the_lean_head_on_the_intended_backbone(config, backbone, with_cp):
    cfg = Config.fromfile(str(ROOT / 'configs' / config))
    assert cfg.model.decode_head.type == 'LeanUPerHead'
    assert cfg.model.backbone.type == backbone
    assert cfg.model.backbone.get('with_cp') is with_cp
    assert 'dr2net_mm' in cfg.custom_imports.imports
    assert cfg.model.decode_head.channels == 512 and cfg.model.decode_head.num_classes == 150
