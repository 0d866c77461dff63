"""Plain PyTorch / timm: converting a timm ViT instance in place, and timm.create_model names."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dr2net_mm.timm_models import ReversibleBlocks, convert_timm_vit

ROOT = Path(__file__).resolve().parents[1]


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                             num_classes=5, **kwargs)


def test_conversion_keeps_keys_head_and_logits_at_1_0():
    model = tiny_vit().eval()
    reference = copy.deepcopy(model)
    head, keys = model.head, list(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    assert convert_timm_vit(model, alpha=1.0, beta=0.0, reversible=False) is model
    assert isinstance(model.blocks, ReversibleBlocks) and model.head is head
    assert list(model.state_dict()) == keys
    model.load_state_dict(reference.state_dict())  # strict: the same keys load back
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
        model.blocks.set_coefficients(0.3, 0.7)
        assert not torch.allclose(model(images), reference(images))


def test_reversible_gradients_match_the_reference_at_0_3_0_7():
    model = convert_timm_vit(tiny_vit(), alpha=0.3, beta=0.7).train()
    reference = copy.deepcopy(model)
    reference.blocks.sequence.reversible = False
    images = torch.randn(2, 3, 32, 32)
    for net in (model, reference):
        net(images).square().sum().backward()
    assert model.blocks.reconstruction_error() == 0.0
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_models_are_refused_with_their_type():
    with pytest.raises(TypeError, match='got Linear'):
        convert_timm_vit(nn.Linear(2, 2))
    model = convert_timm_vit(tiny_vit())
    with pytest.raises(ValueError, match='already converted'):
        convert_timm_vit(model)
    with pytest.raises(ValueError, match=r'beta=-0.5|-0.5'):
        convert_timm_vit(tiny_vit(), beta=-0.5)


def test_create_model_builds_and_loads_a_local_timm_state_dict(tmp_path):
    torch.manual_seed(1)
    weights = timm.create_model('vit_small_patch16_224', depth=2).state_dict()
    path = tmp_path / 'vit_small.pth'
    torch.save(weights, path)
    model = timm.create_model('dr2net_vit_small_patch16_224.augreg_in21k_ft_in1k', pretrained=True,
                              depth=2, beta=0.2, pretrained_cfg_overlay=dict(file=str(path)))
    assert isinstance(model.blocks, ReversibleBlocks)
    assert model.blocks.coefficients == (1.0, 0.2)
    assert model.pretrained_cfg['tag'] == 'augreg_in21k_ft_in1k'  # timm's tag handling
    loaded = model.state_dict()
    assert list(loaded) == list(weights)
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_dr2net_vit_names_a_built_model_in_a_short_error():
    from mmengine.registry import MODELS
    import dr2net_mm  # noqa: F401
    with pytest.raises(TypeError) as info:
        MODELS.build(dict(type='Dr2NetViT', arch=tiny_vit()))
    message = str(info.value)
    assert 'got a VisionTransformer object' in message and 'convert_timm_vit' in message
    assert len(message.splitlines()) <= 3, message


_WITHOUT_OPENMMLAB = '''
import json, sys
for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
    sys.modules[name] = None  # importing them now fails as if they were not installed
import timm, torch
import dr2net_mm.timm_models
model = timm.create_model('dr2net_vit_tiny_patch16_224', depth=2, img_size=32, alpha=0.5, beta=0.5)
model(torch.randn(1, 3, 32, 32)).sum().backward()
print(json.dumps([model.blocks.reconstruction_error(),
                  sorted(m for m, mod in sys.modules.items() if mod is not None and
                         m.split('.')[0] in ('mmengine', 'mmdet', 'mmseg', 'mmcv'))]))
'''


def test_the_timm_path_works_without_openmmlab():
    result = subprocess.run([sys.executable, '-c', _WITHOUT_OPENMMLAB], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [0.0, []]
