"""dr2net_mm.demo.runs: what every demo script shares (train, then test the last checkpoint)."""
import os
import re
import stat

import pytest

from dr2net_mm.demo.runs import epoch_options, train_then_test

FAKE_PYTHON = """#!/bin/sh
# stands in for python: "tools/train.py CONFIG --work-dir DIR ..." or "tools/test.py CONFIG CKPT ..."
if [ "$1" = tools/train.py ]; then
    echo "Epoch(train) [2][16/16] loss: 0.5"
    echo "$4/epoch_2.pth" > "$4/last_checkpoint"
else
    echo "Epoch(test) [16/16] acc/top1: $FAKE_TOP1"
fi
"""


def fake_python(tmp_path, top1):
    path = tmp_path / 'python'
    path.write_text(FAKE_PYTHON.replace('$FAKE_TOP1', top1))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_train_then_test_returns_the_last_checkpoint_and_the_metric_of_the_test_run(tmp_path,
                                                                                    capsys):
    work_dir = str(tmp_path / 'work')
    run = train_then_test(fake_python(tmp_path, '0.625'), 'configs/x.py', work_dir, [],
                          r'Epoch', re.compile(r'acc/top1: ([\d.]+)'),
                          ('2/4 train', '3/4 evaluate {checkpoint}'))
    assert run['values'] == [0.625]
    assert run['checkpoint'] == f'{work_dir}/epoch_2.pth' and run['config'] == 'configs/x.py'
    assert os.path.isfile(os.path.join(work_dir, 'train_output.log'))
    assert f'=== 3/4 evaluate {work_dir}/epoch_2.pth' in capsys.readouterr().out


def test_a_test_run_without_the_metric_ends_the_demo_naming_the_log(tmp_path):
    work_dir = str(tmp_path / 'work')
    with pytest.raises(SystemExit, match=r"printed no 'acc/top1: \(\[\\\\d\.\]\+\)'; see .*"
                       r'test_output\.log'):
        train_then_test(fake_python(tmp_path, 'n/a'), 'configs/x.py', work_dir, [], None,
                        re.compile(r'acc/top1: ([\d.]+)'), ('train', 'evaluate'))


def test_epoch_options_put_validation_the_cosine_end_and_the_hook_end_on_the_schedule():
    assert epoch_options(8, warmup_epochs=2) == [
        '--cfg-options', 'train_cfg.max_epochs=8', 'train_cfg.val_begin=8',
        'train_cfg.val_interval=8', 'param_scheduler.1.T_max=6', 'param_scheduler.1.end=8',
        'default_hooks.checkpoint.interval=8', 'custom_hooks.0.end_epoch=4']
