"""tools/test.py's mmdet/mmseg flags on the demo configs: --out, --show-dir, --tta (and --show's
settings), each as the config's scope (mmdet or mmseg) defines it. Real runs on 2 small images."""
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from dr2net_mm.demo.data import (make_demo_ade20k, make_demo_coco, write_swin_official_checkpoint,
                                 write_vit_timm_checkpoint)
from fault_hooks import damage_mid_file
from tool_runs import ROOT, data_overrides, run_tool as run

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import test as test_tool  # noqa: E402  (tools/test.py)

DET = 'configs/demo/dino_dr2net_swin_t_demo.py'
SEG = 'configs/demo/upernet_dr2net_vit_s_demo.py'


def write_checkpoint(config: str, scope: str, path: str) -> str:
    """A checkpoint of the config's model as initialised (no training needed to test the tool)."""
    cfg = Config.fromfile(config)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg.model)
        model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    root = tmp_path_factory.mktemp('det')
    data_root = str(root / 'coco') + '/'
    make_demo_coco(data_root, num_train=1, num_val=2, image_size=(128, 128))
    write_swin_official_checkpoint(data_root + 'swin_t.pth')
    config = root / 'det.py'
    config.write_text(f'_base_ = {os.path.join(ROOT, DET)!r}\n' + data_overrides(data_root))
    return dict(root=root, config=str(config),
                checkpoint=write_checkpoint(str(config), 'mmdet', str(root / 'det.pth')))


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp('seg')
    data_root = str(root / 'ade') + '/'
    make_demo_ade20k(data_root, num_train=1, num_val=2, image_size=(128, 128))
    write_vit_timm_checkpoint(data_root + 'vit_s.pth')
    config = root / 'seg.py'
    config.write_text(
        f"_base_ = {os.path.join(ROOT, SEG)!r}\ndata_root = {data_root!r}\n"
        "test_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"  # mmseg's hook builds it
        "model = dict(backbone=dict(init_cfg=dict(checkpoint=data_root + 'vit_s.pth')))\n")
    return dict(root=root, config=str(config),
                checkpoint=write_checkpoint(str(config), 'mmseg', str(root / 'seg.pth')))


def images_under(folder) -> list:
    return sorted(f for _, _, files in os.walk(folder) for f in files if f.endswith(('.jpg', '.png')))


def test_mmdet_out_is_a_pickle_of_det_results_and_show_dir_paints_images(det):
    out, work = str(det['root'] / 'results.pkl'), det['root'] / 'work'
    log = run([sys.executable, 'tools/test.py', det['config'], det['checkpoint'], '--work-dir',
               str(work), '--out', out, '--show-dir', 'painted'])
    assert 'coco/bbox_mAP' in log
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2  # DumpDetResults: one dict per image, masks encoded, boxes kept
    assert {'img_id', 'pred_instances'} <= set(results[0])
    assert results[0]['pred_instances']['bboxes'].shape[-1] == 4
    (run_dir, ) = [d for d in os.listdir(work) if os.path.isdir(work / d)]
    assert len(images_under(work / run_dir / 'painted')) == 2  # mmdet: WORK_DIR/TIMESTAMP/DIR


def test_mmdet_tta_runs_with_mmdets_default_flip_tta(det):
    log = run([sys.executable, 'tools/test.py', det['config'], det['checkpoint'], '--work-dir',
               str(det['root'] / 'tta'), '--tta'])
    assert 'coco/bbox_mAP' in log and 'DetTTAModel' in log


def test_mmseg_out_is_a_folder_of_label_maps_and_show_dir_paints_images(seg):
    out, show = seg['root'] / 'labels', seg['root'] / 'painted'
    log = run([sys.executable, 'tools/test.py', seg['config'], seg['checkpoint'], '--work-dir',
               str(seg['root'] / 'work'), '--out', str(out), '--show-dir', str(show),
               '--cfg-options', 'default_hooks.visualization.interval=1'])  # mmseg's default: 50
    assert 'mIoU' in log
    labels = images_under(out)
    assert len(labels) == 2 and all(name.endswith('.png') for name in labels)
    assert len(images_under(show / 'vis_data' / 'vis_image')) == 2  # mmseg: under SHOW_DIR


def test_mmseg_tta_runs_with_the_configs_tta_pipeline(seg):
    log = run([sys.executable, 'tools/test.py', seg['config'], seg['checkpoint'], '--work-dir',
               str(seg['root'] / 'tta'), '--tta'])
    assert 'mIoU' in log and 'SegTTAModel' in log


@pytest.mark.parametrize('config, hook', [(DET, 'test_out_dir'), (SEG, None)])
def test_show_sets_the_hook_as_mmdet_and_mmseg_do(config, hook):
    args = test_tool.parse_args([config, 'ckpt.pth', '--show', '--wait-time', '0.5',
                                 '--show-dir', 'out'])
    cfg = Config.fromfile(os.path.join(ROOT, config))
    test_tool.enable_visualization(cfg, args, test_tool.scope_of(cfg))
    vis = cfg.default_hooks.visualization
    assert vis.draw and vis.show and vis.wait_time == 0.5
    if hook:
        assert vis[hook] == 'out'
    else:
        assert cfg.visualizer.save_dir == 'out'


def refusal(*argv: str) -> str:
    """The message ``python tools/test.py ARGV`` stops with, from its ``main`` run in this process
    (a ``SystemExit`` with a message: printed without a traceback, exit status 1)."""
    with pytest.raises(SystemExit) as stop:
        test_tool.main(list(argv))
    assert isinstance(stop.value.code, str), stop.value.code
    return stop.value.code


def test_wrong_out_for_the_scope_is_refused_with_the_value(seg):
    message = refusal(seg['config'], seg['checkpoint'], '--out', 'x.pkl')
    assert '--out x.pkl' in message and 'folder' in message
    message = refusal(os.path.join(ROOT, 'configs/demo/pix4point_dr2net_vit_s_demo.py'),
                      seg['checkpoint'], '--tta')
    assert "--tta needs an mmdet or mmseg config" in message


def test_damaged_checkpoint_gets_the_test_tools_own_message(det, tmp_path, capsys):
    """A checkpoint damaged mid-file (same size) or cut off: the tool names the file and says it
    cannot be evaluated, without a traceback or advice about --resume (a training option)."""
    damaged, truncated = tmp_path / 'damaged.pth', tmp_path / 'truncated.pth'
    shutil.copyfile(det['checkpoint'], damaged)
    damage_mid_file(damaged)
    data = open(det['checkpoint'], 'rb').read()
    truncated.write_bytes(data[:len(data) // 2])
    for path, problem in ((damaged, 'the file is corrupted: Bad CRC-32'),
                          (truncated, 'the file is truncated or corrupted')):
        message = refusal(det['config'], str(path))
        assert message.startswith(f'tools/test.py: {path} cannot be evaluated: {problem}')
        assert '--resume' not in message
        printed = capsys.readouterr()
        assert 'Traceback' not in printed.out + printed.err
