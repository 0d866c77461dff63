"""Nothing lost, nothing silent (issue 18), through the tools as users run them: a pretrained
checkpoint of another architecture is refused; a kill -9 while a checkpoint is being written loses
nothing and --resume continues from the newest complete checkpoint; a resumed run ends with the
weights of an uninterrupted one, bit for bit; a NaN image in a DINO batch is skipped; --amp without
a GPU and broken checkpoint files get clear messages. Small DINO demo data (4 train images, batch 2:
2 iterations per epoch)."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
from dr2net_mm.models import Dr2NetSwin, PretrainedMismatchError
from tool_runs import ROOT, data_overrides, run_tool as run, scalars, tool_env

PYTHON = sys.executable
TESTS = os.path.dirname(os.path.abspath(__file__))
FAULTS = dict(PYTHONPATH=TESTS)  # fault_hooks.py, imported by the fault configs


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('reliability')
    data_root = str(root / 'coco') + '/'
    make_demo_coco(data_root, num_train=4, num_val=2, image_size=(128, 128))
    write_swin_official_checkpoint(data_root + 'swin_t.pth')
    base = os.path.join(ROOT, 'configs/demo/dino_dr2net_swin_t_demo.py')
    config = root / 'demo_small.py'
    # validation after every epoch: a resumed run must not depend on it having run or not
    config.write_text(f'_base_ = {base!r}\n' + data_overrides(data_root) +
                      'train_cfg = dict(max_epochs=2, val_interval=1)\n'
                      'default_hooks = dict(logger=dict(interval=1), '
                      'checkpoint=dict(interval=1, max_keep_ckpts=1))\n'
                      "custom_hooks = [dict(type='AlphaBetaHook', end_iter=3, interval=1)]\n")
    return dict(root=root, data_root=data_root, config=str(config))


def fault_config(demo, name: str, hook: str) -> str:
    """The demo config with one more hook of tests/fault_hooks.py."""
    path = demo['root'] / f'{name}.py'
    path.write_text(f"_base_ = {demo['config']!r}\n"
                    "custom_imports = dict(imports=['dr2net_mm', 'fault_hooks'], "
                    "allow_failed_imports=False)\n"
                    "custom_hooks = [dict(type='AlphaBetaHook', end_iter=3, interval=1), "
                    f"{hook}]\n")
    return str(path)


def weights(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f'{len(differing)} tensors differ, e.g. {differing[:3]}'


@pytest.fixture(scope='module')
def straight(demo):
    """The uninterrupted 2-epoch run: its final checkpoint."""
    work_dir = str(demo['root'] / 'straight')
    run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir])
    return os.path.join(work_dir, 'epoch_2.pth')


def test_pretrained_checkpoint_of_another_architecture_is_refused(demo, tmp_path):
    swin_b = write_swin_official_checkpoint(str(tmp_path / 'swin_b.pth'),
                                            arch='swin_base_patch4_window7_224')
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(tmp_path / 'run'),
               '--cfg-options', f'model.backbone.init_cfg.checkpoint={swin_b}'], fails=True)
    assert 'Dr2NetSwin: loaded 0 tensors (0.0% of the parameter values)' in out
    assert 'missing 175, unexpected 158, shape-mismatched 169' in out
    assert (f'pretrained weights refused: Dr2NetSwin: only 0.0% of the backbone\'s parameter values '
            f'loaded from {swin_b}') in out
    assert ('the checkpoint is embed_dims=128, blocks per stage (2, 2, 18, 2), the model is '
            'embed_dims=96, blocks per stage (2, 2, 6, 2)') in out
    assert 'allow_partial=True' in out and 'Traceback' not in out
    assert not os.path.exists(tmp_path / 'run' / 'epoch_1.pth')


def test_allow_partial_loads_what_fits_and_reports_the_rest():
    small = dict(depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
    wider = Dr2NetSwin(embed_dims=32, **small).state_dict()
    model = Dr2NetSwin(embed_dims=16, **small)
    with pytest.raises(PretrainedMismatchError, match='a checkpoint dict.*embed_dims=32.*'
                       'the model is embed_dims=16'):
        model.load_pretrained(wider)
    report = model.load_pretrained(wider, allow_partial=True)
    assert report.mismatched_keys and report.missing_keys
    same = Dr2NetSwin(embed_dims=16, **small).state_dict()
    assert model.load_pretrained(same).mismatched_keys == []  # a full load passes


def test_straight_and_resumed_runs_end_with_bitwise_equal_weights(demo, straight):
    work_dir = str(demo['root'] / 'resumed')
    run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--cfg-options',
         'train_cfg.max_epochs=1'])
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--resume'])
    assert 'resumed epoch: 1, iter: 2' in out
    assert_bitwise_equal(weights(straight), weights(os.path.join(work_dir, 'epoch_2.pth')))


def test_kill_during_a_checkpoint_write_then_resume_continues_from_the_newest_complete_one(
        demo, straight):
    work_dir = demo['root'] / 'killed'
    marker = demo['root'] / 'stalled'
    config = fault_config(demo, 'stall', f"dict(type='StallCheckpointHook', epoch=2, "
                          f"marker={str(marker)!r})")
    proc = subprocess.Popen([PYTHON, 'tools/train.py', config, '--work-dir', str(work_dir)],
                            cwd=ROOT, env=tool_env(FAULTS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert marker.exists(), 'the run did not reach the checkpoint of epoch 2'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed while epoch 2 was being saved, max_keep_ckpts=1: epoch 1 is still there and named
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'epoch_1.pth')
    epoch_1 = (work_dir / 'epoch_1.pth').read_bytes()
    # what a non-atomic writer leaves behind: a truncated newer file and a pointer to a lost one
    (work_dir / 'epoch_2.pth').write_bytes(epoch_1[:1 << 20])
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_3.pth'))
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume'])
    assert f'resume: skipping {work_dir}/epoch_3.pth: the file does not exist' in out
    assert f'resume: skipping {work_dir}/epoch_2.pth: the file is truncated or corrupted' in out
    assert f'--resume: resuming from {work_dir}/epoch_1.pth' in out
    assert 'resumed epoch: 1, iter: 2' in out
    assert sorted(p.name for p in work_dir.glob('*.pth*')) == ['epoch_2.pth']
    assert_bitwise_equal(weights(straight), weights(str(work_dir / 'epoch_2.pth')))


def test_nan_image_in_a_dino_batch_is_skipped_and_training_continues(demo):
    work_dir = str(demo['root'] / 'nan')
    config = fault_config(demo, 'nan', "dict(type='NaNImageHook', at_iter=1)")
    # --resume with nothing to resume: a fresh start, said plainly
    out = run([PYTHON, 'tools/train.py', config, '--work-dir', work_dir, '--resume'], env=FAULTS)
    assert f'--resume: no complete checkpoint in {work_dir}; training starts at iteration 0' in out
    assert 'checkpoint None' not in out
    assert 'AlphaBetaHook: skipped a batch at iteration 2: non-finite values in the preprocessed ' \
           'inputs' in out
    train = [s for s in scalars(work_dir) if 'skipped_steps' in s]
    assert [s['step'] for s in train] == [1, 2, 3, 4]
    assert [s['skipped_steps'] for s in train] == [0, 1, 1, 1]
    assert math.isfinite(train[-1]['loss'])
    final = weights(os.path.join(work_dir, 'epoch_2.pth'))
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.is_available(), reason='the message is for machines without a GPU')
def test_amp_without_a_gpu_gets_a_clear_message(demo, tmp_path):
    out = run([PYTHON, 'tools/train.py', demo['config'], '--amp', '--work-dir', str(tmp_path)],
              fails=True)
    assert '--amp (AmpOptimWrapper) needs a CUDA GPU and this machine has none' in out
    assert 'Traceback' not in out


def test_broken_checkpoint_files_are_named(demo, tmp_path):
    broken = tmp_path / 'epoch_1.pth'
    broken.write_bytes(b'PK\x03\x04' + bytes(1000))  # the start of a zip archive, cut off
    out = run([PYTHON, 'tools/test.py', demo['config'], str(broken)], fails=True)
    assert f'test: cannot use checkpoint {broken}: the file is truncated or corrupted' in out
    out = run([PYTHON, 'tools/train.py', demo['config'], '--resume', str(broken)], fails=True)
    assert f'--resume: cannot use checkpoint {broken}: the file is truncated or corrupted' in out


# ------------------------------------------------------------------------------------------------
# Issue 31: a stream overflow is a skipped batch, not a dead run
# ------------------------------------------------------------------------------------------------
def test_overflowing_batch_in_a_dino_run_is_skipped_named_and_the_run_finishes(demo):
    """An outlier image (scaled by 1e7) in the first DINO batch, with patch_norm=False as in the
    issue, takes the backbone's exact streams past |x| < 2^21: the batch is skipped and counted, the
    log names the iteration and the image, its row shows skipped and no loss, and the run trains on
    and finishes (one epoch: 2 iterations)."""
    work_dir = str(demo['root'] / 'overflow')
    config = fault_config(demo, 'overflow', "dict(type='OutlierImageHook', at_iter=0, scale=1e7)")
    out = run([PYTHON, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
               'model.backbone.patch_norm=False', 'train_cfg.max_epochs=1'], env=FAULTS)
    (outlier, ) = [line.split('scaled ')[1].split(' by ')[0] for line in out.splitlines()
                   if line.startswith('OutlierImageHook: scaled ')]
    assert ("AlphaBetaHook: skipped a batch at iteration 1: a reversible stage's exact streams "
            'overflowed on this rank (reversible stage: a stream or branch output reached |x| = ') \
        in out
    assert f"this rank's samples: ['{outlier}'" in out
    assert 'no backward, weights unchanged (skipped steps: 1)' in out
    train = [s for s in scalars(work_dir) if 'skipped_steps' in s]
    assert [s['step'] for s in train] == [1, 2]
    assert [s['skipped_steps'] for s in train] == [1, 1]
    assert [s['skipped'] for s in train] == [1, 0]
    assert 'loss' not in train[0] and 'grad_norm' not in train[0]  # nothing to show yet
    assert math.isfinite(train[1]['loss'])
    checkpoint = torch.load(os.path.join(work_dir, 'epoch_1.pth'), map_location='cpu',
                            weights_only=False)
    assert checkpoint['meta']['reversible_guard']['skipped_steps'] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values()
               if v.is_floating_point())
