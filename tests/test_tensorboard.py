"""TensorBoard through the one-line --cfg-options of the configs: after two demo iterations the event
file holds α, β, the reconstruction error (also as log10, readable on the console) and the skipped
steps. Skipped when the optional `tensorboard` package is not installed."""
import glob
import math
import os
import sys

import pytest

from dr2net_mm.demo.data import make_demo_ade20k, write_vit_timm_checkpoint
from dr2net_mm.engine.reversible_guard import log10_error
from tool_runs import ROOT, run_tool as run

TENSORBOARD = 'visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend'


def test_log10_error_is_readable_and_floors_zero():
    assert log10_error(4.06e-09) == pytest.approx(-8.3915, abs=1e-4)
    assert log10_error(0.0) == -30.0
    assert math.isnan(log10_error(float('nan')))


def test_two_demo_iterations_write_the_scalars_to_tensorboard(tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data_root = str(tmp_path / 'ade') + '/'
    make_demo_ade20k(data_root, num_train=2, num_val=1, image_size=(64, 64))
    write_vit_timm_checkpoint(data_root + 'vit_s.pth')
    config = tmp_path / 'seg.py'
    config.write_text(
        f"_base_ = {os.path.join(ROOT, 'configs/demo/upernet_dr2net_vit_s_demo.py')!r}\n"
        f"data_root = {data_root!r}\n"
        "train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "model = dict(backbone=dict(stream_dtype='float32', "
        "init_cfg=dict(checkpoint=data_root + 'vit_s.pth')))\n"
        "train_cfg = dict(max_iters=2, val_interval=100)\n"
        "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=100))\n"
        "custom_hooks = [dict(type='AlphaBetaHook', end_iter=1, interval=1)]\n")
    work_dir = tmp_path / 'work'
    log = run([sys.executable, 'tools/train.py', str(config), '--work-dir', str(work_dir),
               '--cfg-options', TENSORBOARD])
    assert 'reconstruction_error_log10: -' in log  # float32 streams: a small, nonzero error
    (events, ) = glob.glob(str(work_dir / '*' / 'vis_data' / 'events.out.tfevents.*'))
    scalars = EventAccumulator(events).Reload().Tags()['scalars']
    for tag in ('alpha', 'beta', 'reconstruction_error', 'reconstruction_error_log10',
                'skipped_steps'):
        assert tag in scalars, scalars
    alphas = [e.value for e in EventAccumulator(events).Reload().Scalars('alpha')]
    assert alphas == pytest.approx([1.0, 0.3])
