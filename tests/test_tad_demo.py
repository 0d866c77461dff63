"""`make demo-tad` (tools/demo_tad.py, configs/demo/tad_dr2net_*_demo.py) as a user meets it: its
arguments, the demo configs built and trained a step, and (slow) the demo run end to end through
tools/train.py and tools/test.py at a tiny scale."""
import os
import re
import runpy
import sys

import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from dr2net_mm.benchmark import build_model, training_loss  # noqa: E402
from dr2net_mm.tad.demo_data import make_demo_tad  # noqa: E402
from tool_runs import run_tool as run, tool_help  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DEMOS = {'vit': 'configs/demo/tad_dr2net_vit_s_demo.py',
         'swin': 'configs/demo/tad_dr2net_swin_t_demo.py'}
BACKBONES = {'vit': 'Dr2NetVideoViT', 'swin': 'Dr2NetSwin3D'}


def test_demo_tad_help_describes_the_demo():
    out = tool_help('demo_tad.py')
    assert 'usage: demo_tad.py' in out
    for option in ('--backbones', '--epochs', '--work-dir'):
        assert option in out


@pytest.mark.parametrize('args, message', [
    (['--epochs', '1'], '--epochs 1: need at least 2 (the first one warms up the lr)'),
    (['--backbones', 'resnet'], "argument --backbones: invalid choice: 'resnet'"),
])
def test_demo_tad_refuses_bad_arguments_before_doing_anything(tmp_path, capsys, args, message):
    tool = runpy.run_path(os.path.join(ROOT, 'tools', 'demo_tad.py'), run_name='demo_tad')
    cwd = os.getcwd()
    try:
        with pytest.raises(SystemExit) as exit_info:
            tool['main']([*args, '--work-dir', str(tmp_path / 'w')])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith('usage: ')
    assert not (tmp_path / 'w').exists()


def test_vit_demo_config_builds_and_trains_a_step_with_feature_maps_over_time():
    from mmaction.structures import ActionDataSample
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(os.path.join(ROOT, DEMOS['vit']))
    assert cfg.train_dataloader.dataset.pipeline[0] == dict(type='DecodeWholeVideo',
                                                            num_frames=128)
    model = build_model(cfg)
    assert type(model.backbone).__name__ == 'Dr2NetVideoViT'
    sample = ActionDataSample(metainfo=dict(duration=16.0))
    sample.gt_instances = InstanceData(segments=torch.tensor([[0.2, 0.5]]),
                                       labels=torch.tensor([1]))
    batch = dict(inputs=[torch.randint(0, 256, (1, 3, 128, 32, 32), dtype=torch.uint8)],
                 data_samples=[sample])
    model.train()
    loss = training_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.reconstruction_errors() == [0.0]
    with torch.no_grad():
        logits, _ = model(model.data_preprocessor(batch)['inputs'], mode='tensor')
    assert [t.shape[1] for t in logits] == [64, 32, 16, 8, 4]  # tubelet 2: 64 steps, 5 levels


@pytest.mark.slow
@pytest.mark.parametrize('name', list(DEMOS))
def test_demo_config_trains_then_test_tool_reports_map(name, tmp_path):
    """Each demo config on 4 + 2 generated videos: one epoch (one iteration of 4), (α, β) moved to
    (0.3, 0.7), then tools/test.py prints the four mAP numbers."""
    data_root = str(tmp_path / 'data') + '/'
    make_demo_tad(data_root, num_train=4, num_val=2)
    checkpoint = {'vit': 'videomae_vit_192x4_official_random.pth',
                  'swin': 'swin_48x2222_official_random.pth'}[name]
    from dr2net_mm.demo.data import write_swin_official_checkpoint, write_videomae_official_checkpoint
    if name == 'vit':
        write_videomae_official_checkpoint(data_root + checkpoint, embed_dims=192, depth=4,
                                           num_heads=3)
        option = f'model.backbone.init_cfg.checkpoint={data_root}{checkpoint}'
    else:
        write_swin_official_checkpoint(data_root + checkpoint, embed_dim=48, depths=(2, 2, 2, 2),
                                       num_heads=(2, 4, 8, 16))
        option = f'model.backbone.pretrained={data_root}{checkpoint}'
    options = ['--cfg-options', option]
    for loader in ('train', 'val', 'test'):
        options += [f'{loader}_dataloader.dataset.ann_file={data_root}annotations.json',
                    f'{loader}_dataloader.dataset.data_prefix.video={data_root}videos/']
    options += ['train_cfg.max_epochs=1', 'train_cfg.val_begin=1', 'train_cfg.val_interval=1',
                'param_scheduler.1.begin=0', 'param_scheduler.1.end=1',
                'param_scheduler.1.T_max=1', 'default_hooks.checkpoint.interval=1',
                'default_hooks.logger.interval=1', 'custom_hooks.0.end_epoch=1',
                'custom_hooks.0.interval=1']
    work_dir = str(tmp_path / 'train')
    out = run([PYTHON, 'tools/train.py', DEMOS[name], '--work-dir', work_dir, *options])
    assert re.search(rf'{BACKBONES[name]}: loaded \d+ tensors \(100\.0% of the parameter values\)',
                     out)
    assert 'reconstruction_error: 0.0000' in out
    assert re.search(r'Epoch\(val\) \[1\]\[1/1\]\s+tad/mAP@0\.5: [\d.]+', out)
    checkpoint = os.path.join(work_dir, 'epoch_1.pth')
    out = run([PYTHON, 'tools/test.py', DEMOS[name], checkpoint, '--work-dir',
               str(tmp_path / 'test'), *options])
    found = re.findall(r'tad/mAP@0\.5: ([\d.]+)\s+tad/mAP@0\.75: [\d.]+\s+tad/mAP@0\.95: [\d.]+'
                       r'\s+tad/mAP: ([\d.]+)', out)
    assert found and 0 <= float(found[-1][1]) <= float(found[-1][0]) <= 1
