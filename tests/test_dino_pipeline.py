"""The DINO + Dr2NetSwin-T pipeline through the user-facing tools, in subprocesses, as a user runs
them: tools/train.py, tools/test.py, tools/dist_train.sh (2 processes, gloo), --resume, and a user
config inheriting the main COCO config. Small data (4 train / 2 val images) and few iterations."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
from tool_runs import data_overrides, run_tool as run, scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('dino')
    data_root = str(root / 'coco') + '/'
    make_demo_coco(data_root, num_train=4, num_val=2, image_size=(128, 128))
    write_swin_official_checkpoint(data_root + 'swin_t.pth')
    config = root / 'demo_small.py'
    config.write_text(f"_base_ = {os.path.join(ROOT, 'configs/demo/dino_dr2net_swin_t_demo.py')!r}\n"
                      + data_overrides(data_root) +
                      "train_cfg = dict(max_epochs=2, val_interval=2)\n"
                      "default_hooks = dict(logger=dict(interval=1), "
                      "checkpoint=dict(interval=1, max_keep_ckpts=3))\n"
                      "custom_hooks = [dict(type='AlphaBetaHook', end_iter=3, interval=1)]\n")
    return dict(root=root, data_root=data_root, config=str(config))


def test_train_runs_and_validates_with_coco_metric_then_test_uses_stored_coefficients(demo):
    work_dir = str(demo['root'] / 'train')
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir])
    assert 'coco/bbox_mAP' in out
    logged = scalars(work_dir)
    train = [s for s in logged if 'alpha' in s]
    assert [s['alpha'] for s in train] == pytest.approx([1.0, 1 - 0.7 / 3, 1 - 1.4 / 3, 0.3])
    assert any('coco/bbox_mAP' in s for s in logged)
    checkpoint = torch.load(os.path.join(work_dir, 'epoch_2.pth'), map_location='cpu',
                            weights_only=False)
    assert checkpoint['state_dict']['backbone.alpha'].item() == pytest.approx(0.3)
    assert checkpoint['state_dict']['backbone.beta'].item() == pytest.approx(0.7)
    # tools/test.py evaluates with the (α, β) stored in the checkpoint
    out = run([PYTHON, 'tools/test.py', demo['config'], os.path.join(work_dir, 'epoch_2.pth'),
               '--work-dir', str(demo['root'] / 'test'), '--cfg-options',
               'model.backbone.alpha=1.0', 'model.backbone.beta=0.1'])
    assert 'coco/bbox_mAP' in out
    assert 'evaluated with (alpha, beta) = (0.3, 0.7)' in out


@pytest.mark.slow  # 53 s; tests/test_reliability.py covers exact resume
def test_resume_continues_with_the_right_iteration_and_coefficients(demo):
    work_dir = str(demo['root'] / 'resume')
    run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--cfg-options',
         'train_cfg.max_epochs=1', 'train_cfg.val_interval=5'])
    out = run([PYTHON, 'tools/train.py', demo['config'], '--work-dir', work_dir, '--resume'])
    assert 'resumed epoch: 1, iter: 2' in out
    resumed = [s for s in scalars_latest(work_dir) if 'alpha' in s]
    assert [s['step'] for s in resumed] == [3, 4]
    assert [s['alpha'] for s in resumed] == pytest.approx([1 - 1.4 / 3, 0.3])


def scalars_latest(work_dir):
    runs = sorted(d for d in os.listdir(work_dir) if re.fullmatch(r'\d{8}_\d{6}', d))
    with open(os.path.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_dist_train_two_processes_on_gloo(demo):
    """Slow-marked because it is flaky, not because it is long (20 s): in 2 of 5 full CI runs one
    rank aborted at the end with "terminate called without an active exception" after training and
    validation had finished (0 of 14 direct runs of the same command reproduced it). Open defect;
    `make test-all` runs it."""
    work_dir = str(demo['root'] / 'dist')
    out = run(['bash', 'tools/dist_train.sh', demo['config'], '2', '--work-dir', work_dir,
               '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=5',
               'train_dataloader.batch_size=1'],
              env=dict(PYTHON=PYTHON, PORT=str(29500 + os.getpid() % 1000)))
    assert 'Epoch(train) [1][2/2]' in out  # 4 images, 2 processes, batch 1: 2 iterations
    assert os.path.isfile(os.path.join(work_dir, 'epoch_1.pth'))


def test_user_config_inheriting_the_main_config_builds_and_runs(demo, tmp_path):
    """A user's own config on top of configs/dino_dr2net_swin_t_coco.py: own data, another image
    size, another α/β path and float32 streams."""
    config = tmp_path / 'my_dino.py'
    config.write_text(f"""_base_ = {os.path.join(ROOT, 'configs/dino_dr2net_swin_t_coco.py')!r}
data_root = {demo['data_root']!r}
classes = ('square', 'disk', 'triangle')
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='PackDetInputs')
]
loader = dict(batch_size=1, num_workers=0, persistent_workers=False)
train_dataloader = dict(**loader, dataset=dict(
    data_root=data_root, metainfo=dict(classes=classes), pipeline=pipeline,
    ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'), indices=2))
val_dataloader = dict(**loader, dataset=dict(
    data_root=data_root, metainfo=dict(classes=classes), pipeline=pipeline,
    ann_file='annotations/instances_val.json', data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
model = dict(num_queries=50, test_cfg=dict(max_per_img=50), bbox_head=dict(num_classes=len(classes)),
             backbone=dict(stream_dtype='float32', beta=0.2,
                           init_cfg=dict(checkpoint=data_root + 'swin_t.pth')))
train_cfg = dict(max_epochs=1, val_interval=1)
custom_hooks = [dict(type='AlphaBetaHook', start=(1.0, 0.2), end=(0.5, 0.5), end_iter=2)]
""")
    out = run([PYTHON, 'tools/train.py', str(config), '--work-dir', str(tmp_path / 'work')])
    assert 'Epoch(train) [1][2/2]' in out and 'coco/bbox_mAP' in out


def test_missing_dataset_gives_a_clear_error(tmp_path):
    proc = subprocess.run([PYTHON, 'tools/train.py', 'configs/dino_dr2net_swin_t_coco.py',
                           '--work-dir', str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'), timeout=300)
    assert proc.returncode != 0
    assert 'dataset not found' in proc.stderr and 'data/coco/annotations/instances_train2017.json' \
        in proc.stderr and 'make demo' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_data_check_requires_only_folders_the_pipeline_reads(tmp_path):
    """mmdet's stock Mask2Former instance config inherits the panoptic config's `seg` prefix
    (annotations/panoptic_train2017/), which its pipeline never reads: tools/train.py warns about it
    and goes on, as mmdet's own train.py does; a missing image folder still stops it."""
    from dr2net_mm.runner_utils import load_config, missing_data_paths, require_data
    root = tmp_path / 'coco'
    for folder in ('annotations', 'train2017', 'val2017'):
        (root / folder).mkdir(parents=True)
    for split in ('train', 'val'):
        (root / f'annotations/instances_{split}2017.json').write_text('{}')
    mmdet_configs = os.path.join(os.path.dirname(__import__('mmdet').__file__), '.mim', 'configs')
    cfg = load_config(os.path.join(mmdet_configs, 'mask2former',
                                   'mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py'),
                      {'train_dataloader.dataset.data_root': f'{root}/',
                       'val_dataloader.dataset.data_root': f'{root}/'}, str(tmp_path / 'work'))
    assert missing_data_paths(cfg) == []
    assert missing_data_paths(cfg, required=False) == [
        f'train_dataloader: {root}/annotations/panoptic_train2017/',
        f'val_dataloader: {root}/annotations/panoptic_val2017/']
    require_data(cfg, ('train_dataloader', 'val_dataloader'))  # warns, does not exit
    (root / 'val2017').rmdir()
    with pytest.raises(SystemExit, match=f'val_dataloader: {root}/val2017/'):
        require_data(cfg, ('train_dataloader', 'val_dataloader'))
