"""tools/reproduce.py (`make reproduce`) in miniature: pretrain a few steps on the digits 0-4, save the
timm checkpoint, finetune a few MMEngine iterations as Dr²Net (AlphaBetaHook) on 5-9, test."""
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool():
    spec = importlib.util.spec_from_file_location('reproduce', os.path.join(ROOT, 'tools', 'reproduce.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_digits_ship_with_scikit_learn_and_the_splits_hold_them_all():
    from dr2net_mm.demo.digits import digit_splits
    splits = digit_splits()
    assert {k: len(v[1]) for k, v in splits.items()} == dict(
        source_train=600, source_test=301, target_train=150, target_test=746)  # 1797 in all
    for name, (images, labels) in splits.items():
        assert images.shape[1:] == (1, 8, 8) and -1 <= images.min() and images.max() <= 1
        assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4], name


def test_pretrain_save_finetune_as_dr2net_and_evaluate(tmp_path):
    tool = load_tool()
    out = str(tmp_path / 'table')
    result = tool.main(['--iters', '4', '--pretrain-iters', '3', '--seeds', '0', '--rows', 'dr2net',
                        '--work-dir', str(tmp_path), '--out', out])
    # the pretrained model is a timm ViT state dict (its classifier included) ...
    checkpoint = torch.load(tmp_path / 'vit_digits04_timm.pth')
    assert 'blocks.3.mlp.fc2.weight' in checkpoint and checkpoint['head.weight'].shape == (5, 64)
    assert 0 <= result['source_accuracy'] <= 100
    # ... and it is what the Dr²Net row's backbone starts from
    from mmengine.registry import MODELS
    cfg = tool.row_config('dr2net', 0, 4, str(tmp_path / 'vit_digits04_timm.pth'), str(tmp_path))
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert torch.equal(model.backbone.blocks[3].mlp.fc2.weight, checkpoint['blocks.3.mlp.fc2.weight'])
    assert type(model.backbone).__name__ == 'Dr2NetViT' and model.backbone.sequence.reversible
    assert [h.type for h in cfg.custom_hooks] == ['AlphaBetaHook'] and cfg.custom_hooks[0].end_iter == 2
    assert cfg.custom_hooks[0].interval == 1
    # the run went through the Runner: the hook moved (α, β) to the end point by iteration 4
    row = result['rows']['dr2net']
    assert len(row['accuracy']) == 1 and 0 <= row['accuracy'][0] <= 100 and row['peak_mb'] > 0
    with open(out + '.json') as f:
        assert json.load(f)['rows']['dr2net']['accuracy'] == row['accuracy']
    assert os.path.getsize(out + '.png') > 0 and '| dr2net |' in open(out + '.md').read()
    logs = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / 'dr2net_seed0') for f in fs
            if f == 'scalars.json']
    scalars = [json.loads(line) for path in logs for line in open(path) if 'alpha' in line]
    assert scalars and scalars[-1]['alpha'] == pytest.approx(0.3) and scalars[-1]['beta'] == pytest.approx(0.7)


@pytest.mark.parametrize('row', ['frozen_random', 'with_cp', 'hard_finetune', 'reversible_scratch'])
def test_every_row_differs_from_the_dr2net_row_only_by_its_definition(row, tmp_path):
    tool = load_tool()
    cfg = tool.row_config(row, 1, 10, 'ckpt.pth', str(tmp_path))
    base = tool.row_config('dr2net', 1, 10, 'ckpt.pth', str(tmp_path))
    for key in ('train_cfg', 'optim_wrapper', 'param_scheduler', 'randomness', 'train_dataloader'):
        assert cfg[key] == base[key], key
    backbone = cfg.model.backbone
    assert backbone.type == ('PlainViT' if row in ('frozen_random', 'with_cp') else 'Dr2NetViT')
    assert ('init_cfg' in backbone) == (row in ('with_cp', 'hard_finetune'))
    assert cfg.model.frozen == (row == 'frozen_random') and cfg.custom_hooks == []
    if row in ('hard_finetune', 'reversible_scratch'):
        assert (backbone.alpha, backbone.beta) == (0.3, 0.7)
