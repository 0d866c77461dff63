"""`make demo-rvos` (tools/demo_rvos.py, configs/demo/rvos_dr2net_swin_t_demo.py) as a user meets
it: its arguments, the demo config built and trained a step, and (slow) the demo run end to end
through tools/train.py and tools/test.py at a tiny scale."""
import os
import re
import runpy
import sys

import pytest
import torch

pytest.importorskip('mmaction')
pytest.importorskip('transformers')
pytest.importorskip('h5py')
import dr2net_mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from dr2net_mm.benchmark import build_model, training_loss  # noqa: E402
from dr2net_mm.rvos.demo_data import make_demo_rvos  # noqa: E402
from tool_runs import run_tool as run, tool_help  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
DEMO = 'configs/demo/rvos_dr2net_swin_t_demo.py'


def test_demo_rvos_help_describes_the_demo():
    out = tool_help('demo_rvos.py')
    assert 'usage: demo_rvos.py' in out
    for option in ('--epochs', '--work-dir'):
        assert option in out


def test_demo_rvos_refuses_bad_arguments_before_doing_anything(tmp_path, capsys):
    tool = runpy.run_path(os.path.join(ROOT, 'tools', 'demo_rvos.py'), run_name='demo_rvos')
    cwd = os.getcwd()
    try:
        with pytest.raises(SystemExit) as exit_info:
            tool['main'](['--epochs', '0', '--work-dir', str(tmp_path / 'w')])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    assert '--epochs 0: need at least 1' in capsys.readouterr().err
    assert not (tmp_path / 'w').exists()


def test_demo_config_builds_and_trains_a_step_on_the_demo_set(tmp_path):
    root = make_demo_rvos(str(tmp_path / 'set'), num_train=1, num_val=1)
    cfg = Config.fromfile(os.path.join(ROOT, DEMO))
    cfg.model.text_encoder.vocab_file = os.path.join(root, 'text_annotations/vocab.json')
    model = build_model(cfg)
    assert type(model.backbone).__name__ == 'Dr2NetSwin3D'
    assert not model.text_encoder.frozen  # random, so it trains
    from mmengine.registry import DATASETS
    dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=root))
    batch = dict(inputs=[dataset[0]['inputs']], data_samples=[dataset[0]['data_samples']])
    assert tuple(batch['inputs'][0].shape) == (1, 3, 8, 64, 64)
    model.train()
    loss = training_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.reconstruction_errors() == [0.0] * 3  # three stages (the demo config)


@pytest.mark.slow
def test_demo_config_trains_then_test_tool_reports_the_metrics(tmp_path):
    """The demo config on 1 + 1 generated videos: one epoch, (α, β) moved to (0.3, 0.7), then
    tools/test.py prints the five metrics."""
    root = make_demo_rvos(str(tmp_path / 'data'), num_train=1, num_val=1) + '/'
    options = ['--cfg-options', f'model.text_encoder.vocab_file={root}text_annotations/vocab.json']
    for loader in ('train', 'val', 'test'):
        options.append(f'{loader}_dataloader.dataset.data_root={root}')
    options += ['train_cfg.max_epochs=1', 'train_cfg.val_begin=1', 'train_cfg.val_interval=1',
                'param_scheduler.1.T_max=1', 'param_scheduler.1.end=1',
                'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
                'custom_hooks.0.end_epoch=1', 'custom_hooks.0.interval=1']
    work_dir = str(tmp_path / 'train')
    out = run([PYTHON, 'tools/train.py', DEMO, '--work-dir', work_dir, *options])
    assert 'reconstruction_error: 0.0000' in out
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+rvos/mAP: [\d.]+', out)
    out = run([PYTHON, 'tools/test.py', DEMO, os.path.join(work_dir, 'epoch_1.pth'),
               '--work-dir', str(tmp_path / 'test'), *options])
    found = re.findall(r'rvos/mAP: ([\d.]+)\s+rvos/mAP@0\.5: [\d.]+\s+rvos/mAP@0\.75: [\d.]+\s+'
                       r'rvos/overall_IoU: ([\d.]+)\s+rvos/mean_IoU: [\d.]+', out)
    assert found and all(0 <= float(v) <= 1 for v in found[-1])
