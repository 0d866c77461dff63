"""Nothing lost, nothing silent (issue 18), through the tools as users run them: a pretrained
checkpoint of another architecture is refused; a kill -9 while a checkpoint is being written loses
nothing and --resume continues from the newest complete checkpoint; a resumed run ends with the
weights of an uninterrupted one, bit for bit; a NaN image in a DINO batch is skipped; --amp without
a GPU and broken checkpoint files get clear messages. Small DINO demo data (4 train images, batch 2:
2 iterations per epoch).

Issue 31: a full disk during a save, and auto-resume among a stray weights file, a garbled
``last_checkpoint``, a checkpoint damaged mid-file, a pointer that lags and an orphaned old
checkpoint; checkpoints that torch's weights-only loader and MMEngine's own test path read."""
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
from dr2net_mm.engine.checkpoint_files import find_resume_checkpoint
from dr2net_mm.engine.plain_state import MARK
from dr2net_mm.models import Dr2NetSwin, PretrainedMismatchError
from fault_hooks import damage_mid_file
from test_alpha_beta_hook import ToyClassifier, make_runner
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


@pytest.fixture(scope='module')
def first_epoch(demo):
    """A 1-epoch run of the demo config (max_keep_ckpts=1): its epoch_1.pth, from which the straight
    run's epoch 2 follows."""
    work_dir = str(demo['root'] / 'first_epoch')
    run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--cfg-options',
         'train_cfg.max_epochs=1'])
    return os.path.join(work_dir, 'epoch_1.pth')


def work_dir_with(path, pointer=None, **checkpoints):
    """A work dir holding copies of ``checkpoints`` (name → file) and a ``last_checkpoint`` naming
    ``pointer`` (a name in it), as a run would leave it."""
    path.mkdir()
    for name, source in checkpoints.items():
        shutil.copyfile(source, path / f'{name}.pth')
    if pointer is not None:
        (path / 'last_checkpoint').write_text(str(path / f'{pointer}.pth'))
    return path


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


def test_straight_and_resumed_runs_end_with_bitwise_equal_weights(demo, first_epoch, straight):
    """The 1-epoch run's work dir (its checkpoint and pointer), resumed to epoch 2."""
    work_dir = str(work_dir_with(demo['root'] / 'resumed', pointer='epoch_1', epoch_1=first_epoch))
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--resume'])
    assert 'resumed epoch: 1, iter: 2' in out
    assert_bitwise_equal(weights(straight), weights(os.path.join(work_dir, 'epoch_2.pth')))


@pytest.mark.slow  # ~55 s: a run killed mid-save, then resumed (make test-all)
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
    assert f'tools/test.py: {broken} cannot be evaluated: the file is truncated or corrupted' in out
    assert '--resume' not in out and 'Traceback' not in out
    out = run([PYTHON, 'tools/train.py', demo['config'], '--resume', str(broken)], fails=True)
    assert f'--resume: cannot use checkpoint {broken}: the file is truncated or corrupted' in out


# ------------------------------------------------------------------------------------------------
# Issue 31: full disk, resume traps, weights-only checkpoints
# ------------------------------------------------------------------------------------------------
def test_checkpoint_of_a_run_loads_weights_only_and_mmengines_runner_evaluates_it(demo, straight,
                                                                                   tmp_path):
    """Item 7: torch's weights-only loader (the default since torch 2.6) reads our checkpoint, and
    MMEngine's Runner.from_cfg(cfg).test() with load_from (what mmdet's own tools/test.py runs)
    evaluates it with no TORCH_FORCE_* variable."""
    checkpoint = torch.load(straight, map_location='cpu', weights_only=True)
    assert {'meta', 'state_dict', 'message_hub', 'optimizer'} <= set(checkpoint)
    assert checkpoint['message_hub']['log_scalars']['train/loss'][MARK] == 'HistoryBuffer'
    assert checkpoint['meta']['rng_states']['numpy'][1][MARK] == 'ndarray'
    script = tmp_path / 'mmengine_test.py'
    script.write_text('import sys\nfrom mmengine.config import Config\n'
                      'from mmengine.runner import Runner\n'
                      'cfg = Config.fromfile(sys.argv[1])\n'
                      'cfg.work_dir, cfg.load_from = sys.argv[2], sys.argv[3]\n'
                      'Runner.from_cfg(cfg).test()\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith('TORCH_FORCE_')}
    proc = subprocess.run([PYTHON, str(script), demo['config'], str(tmp_path / 'work'), straight],
                          cwd=ROOT, env=dict(env, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'),
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'Load checkpoint from' in out and 'coco/bbox_mAP' in out


@pytest.mark.slow  # ~50 s: a save failing with ENOSPC, then resumed (make test-all)
def test_disk_full_during_a_save_stops_cleanly_and_resume_continues_from_the_previous_checkpoint(
        demo, first_epoch, straight):
    """Item 2: the save of epoch 2 fails with ENOSPC halfway (a patched writer): a message naming the
    file, the bytes needed and free, also in the work dir's log; no .tmp; epoch_1.pth and
    last_checkpoint untouched. After "freeing space", --resume continues from epoch 1 and ends with
    the straight run's weights, bit for bit."""
    work_dir = work_dir_with(demo['root'] / 'disk_full', pointer='epoch_1', epoch_1=first_epoch)
    config = fault_config(demo, 'disk_full', "dict(type='DiskFullHook', epoch=2)")
    out = run([PYTHON, 'tools/train.py', config, '--work-dir', str(work_dir), '--resume'],
              env=FAULTS, fails=True)
    message = re.search(r'SafeCheckpointHook: could not save checkpoint (\S+): \[Errno 28\] No space '
                        r'left on device.*? It needs about (\d+) bytes .*?; (\d+) bytes .*? are free',
                        out)
    assert message, out[-3000:]
    assert message.group(1) == f'{work_dir}/epoch_2.pth'
    assert int(message.group(2)) >= os.path.getsize(first_epoch) // 2 > 0
    assert int(message.group(3)) > 0
    assert f'{work_dir}/epoch_1.pth and {work_dir}/last_checkpoint are as they were' in out
    assert 'max_keep_ckpts + 1 checkpoints' in out and 'Traceback' not in out
    (log, ) = work_dir.glob('*/*.log')
    assert 'could not save checkpoint' in log.read_text()
    assert sorted(p.name for p in work_dir.glob('*.pth*')) == ['epoch_1.pth']  # no .tmp
    assert (work_dir / 'epoch_1.pth').read_bytes() == open(first_epoch, 'rb').read()
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'epoch_1.pth')
    # a .tmp a killed save leaves is removed before the Runner is built (a full disk needs it)
    (work_dir / 'epoch_2.pth.tmp').write_bytes(b'cut off')
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume'])
    removal = out.index(f'removing {work_dir}/epoch_2.pth.tmp')
    assert removal < out.index('System environment')
    assert f'--resume: resuming from {work_dir}/epoch_1.pth' in out
    assert 'resumed epoch: 1, iter: 2' in out
    assert_bitwise_equal(weights(straight), weights(str(work_dir / 'epoch_2.pth')))


def test_resume_ignores_a_stray_weights_file_and_a_garbled_pointer(demo, first_epoch, straight):
    """Trap 1: pretrained weights in the work dir (newest by time), a weights-only file named like
    a checkpoint of a later epoch and a garbled last_checkpoint: resume takes epoch_2.pth."""
    work_dir = work_dir_with(demo['root'] / 'stray', epoch_1=first_epoch, epoch_2=straight)
    torch.save({'state_dict': weights(straight)}, work_dir / 'epoch_3.pth')
    shutil.copyfile(demo['data_root'] + 'swin_t.pth', work_dir / 'swin_t.pth')
    (work_dir / 'last_checkpoint').write_bytes(bytes(range(7, 200)))
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume'])
    assert f'resume: ignoring {work_dir}/last_checkpoint: it names' in out
    assert (f'resume: skipping {work_dir}/epoch_3.pth: it holds no meta, message_hub: model '
            'weights, not a checkpoint written by a training run') in out
    assert f'{work_dir}/swin_t.pth' not in out
    assert f'--resume: resuming from {work_dir}/epoch_2.pth' in out
    assert 'resumed epoch: 2, iter: 4' in out


@pytest.mark.slow  # ~55 s: a resume past a damaged checkpoint (make test-all)
def test_resume_skips_a_checkpoint_damaged_mid_file_and_continues_bit_exact(
        demo, first_epoch, straight):
    """Trap 2: epoch_2.pth damaged in the middle (size unchanged, zip directory intact, named by
    last_checkpoint): skipped with a warning naming it; resume from epoch_1.pth, with torch forced
    to weights-only loads, ends with the straight run's weights."""
    work_dir = work_dir_with(demo['root'] / 'damaged', pointer='epoch_2', epoch_1=first_epoch,
                             epoch_2=straight)
    damage_mid_file(work_dir / 'epoch_2.pth')
    assert os.path.getsize(work_dir / 'epoch_2.pth') == os.path.getsize(straight)
    assert zipfile.is_zipfile(work_dir / 'epoch_2.pth')  # the zip directory at the end is intact
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume'],
              env=dict(TORCH_FORCE_WEIGHTS_ONLY_LOAD='1'))
    assert f'resume: skipping {work_dir}/epoch_2.pth: the file is corrupted: Bad CRC-32' in out
    assert f'--resume: resuming from {work_dir}/epoch_1.pth' in out
    assert 'resumed epoch: 1, iter: 2' in out
    assert_bitwise_equal(weights(straight), weights(str(work_dir / 'epoch_2.pth')))


def test_resume_takes_the_newer_complete_checkpoint_when_the_pointer_lags(demo, first_epoch,
                                                                          straight):
    """Trap 3: killed after epoch_2.pth was published but before last_checkpoint was rewritten:
    the pointer names epoch_1.pth, resume takes epoch_2.pth by its step number."""
    work_dir = work_dir_with(demo['root'] / 'lagging', pointer='epoch_1', epoch_1=first_epoch,
                             epoch_2=straight)
    os.utime(work_dir / 'epoch_1.pth')  # newer by modification time: must not matter
    assert find_resume_checkpoint(str(work_dir)) == str(work_dir / 'epoch_2.pth')
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume'])
    assert f'--resume: resuming from {work_dir}/epoch_2.pth' in out
    assert 'resumed epoch: 2, iter: 4' in out


@pytest.mark.slow  # ~47 s: a resume that saves one more epoch (make test-all)
def test_orphaned_old_checkpoint_is_removed_at_the_next_save(demo, first_epoch, straight):
    """Trap 4: killed after last_checkpoint named epoch_2.pth but before epoch_1.pth was removed
    (max_keep_ckpts=1): resume takes epoch_2.pth, and the save of epoch 3 removes the orphan too."""
    work_dir = work_dir_with(demo['root'] / 'orphan', pointer='epoch_2', epoch_1=first_epoch,
                             epoch_2=straight)
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', str(work_dir), '--resume',
               '--cfg-options', 'train_cfg.max_epochs=3'])
    assert f'--resume: resuming from {work_dir}/epoch_2.pth' in out
    assert 'resumed epoch: 2, iter: 4' in out
    assert f'removing {work_dir}/epoch_1.pth: older than the 1 checkpoint(s) max_keep_ckpts keeps' \
        in out
    assert sorted(p.name for p in work_dir.glob('*.pth*')) == ['epoch_3.pth']


def test_a_failed_save_with_on_save_error_warn_trains_on_and_saves_at_the_next_interval(
        tmp_path, monkeypatch):
    """on_save_error='warn': the failed save of iteration 2 is logged, training goes on, the save
    of iteration 3 succeeds; no .tmp; the weights equal an undisturbed run's."""
    monkeypatch.syspath_prepend(TESTS)
    import fault_hooks  # noqa: F401  (registers DiskFullHook)
    hooks = dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=1,
                                 max_keep_ckpts=1, on_save_error='warn'))
    plain = make_runner(tmp_path / 'plain', ToyClassifier(), max_iters=3, default_hooks=hooks)
    plain.train()
    faulty = make_runner(tmp_path / 'faulty', ToyClassifier(), max_iters=3, default_hooks=hooks,
                         extra_hooks=[dict(type='DiskFullHook', iter=2)])
    faulty.train()
    log = next((tmp_path / 'faulty').glob('*/*.log')).read_text()
    assert f'could not save checkpoint {tmp_path}/faulty/iter_2.pth' in log
    assert "Training goes on (on_save_error='warn')" in log
    assert sorted(p.name for p in (tmp_path / 'faulty').glob('iter_*')) == ['iter_3.pth']
    assert_bitwise_equal(weights(str(tmp_path / 'plain' / 'iter_3.pth')),
                         weights(str(tmp_path / 'faulty' / 'iter_3.pth')))


def test_on_save_error_must_be_stop_or_warn():
    from dr2net_mm.engine import SafeCheckpointHook
    with pytest.raises(ValueError, match=r"on_save_error='ignore'; use 'stop'.*or 'warn'"):
        SafeCheckpointHook(on_save_error='ignore')


# ------------------------------------------------------------------------------------------------
# Issue 31: a stream overflow is a skipped batch, not a dead run
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~37 s: a DINO run with an outlier batch (make test-all)
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
