"""`make demo`: DINO + Dr²Net Swin-T, end to end, on generated data, on a CPU, in minutes.

1. generates the demo COCO-format set (data/demo_coco: shapes on textured backgrounds) and a
   randomly initialised Swin-T checkpoint in the official release format (the stand-in for the
   ImageNet weights, loaded through the same `convert_weights=True` path);
2. trains configs/demo/dino_dr2net_swin_t_demo.py with tools/train.py (AlphaBetaHook moves (α, β)
   from (1, 0.1) to (0.3, 0.7));
3. evaluates the last checkpoint with tools/test.py (pycocotools' COCO bbox metric);
4. measures one training step of the same detector on a demo batch with each backbone:
   conventional Swin-T, with activation checkpointing (with_cp=True), and Dr²Net.

    python tools/demo.py [--epochs N] [--work-dir DIR] [--skip-train]
"""
import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import run_logged, step  # noqa: E402

CONFIG = 'configs/demo/dino_dr2net_swin_t_demo.py'
DATA = 'data/demo_coco'
PRETRAINED = os.path.join(DATA, 'swin_tiny_official_random.pth')
SHOW = r'Epoch\((train|val|test)\)|bbox_mAP|Error|error:|Saving checkpoint'


def compare_backbones(config_path: str):
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS

    from dr2net_mm.benchmark import compare, detector_variants, markdown_table, swap_backbone
    cfg = Config.fromfile(config_path)
    init_default_scope('mmdet')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(cfg.train_dataloader.batch_size)])
    configs = {
        'conventional': swap_backbone(cfg, 'SwinTransformer', with_cp=False),
        'checkpointing': swap_backbone(cfg, 'SwinTransformer', with_cp=True),
        'dr2net': cfg,
    }
    results = compare(detector_variants(configs, data=batch), torch.device('cpu'), iters=2)
    shape = tuple(batch['inputs'][0].shape[-2:])
    print(markdown_table(results, f'DINO-4scale Swin-T training step, demo batch of '
                         f'{len(batch["inputs"])} at {shape[0]}x{shape[1]}, CPU'))
    print('(At demo sizes the detector head and the parameter gradients dominate; at 1024² the '
          'backbone activations do: see README, Results.)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=None, help='override max_epochs')
    parser.add_argument('--work-dir', default='work_dirs/demo_dino')
    parser.add_argument('--skip-train', action='store_true', help='evaluate/compare only')
    parser.add_argument('--compare-only', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_only:  # step 4, in its own process (see main)
        compare_backbones(CONFIG)
        return
    start = time.time()
    os.chdir(ROOT)
    os.makedirs(args.work_dir, exist_ok=True)

    t = step('1/4 demo data and stand-in pretrained Swin-T')
    from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
    make_demo_coco(DATA)
    write_swin_official_checkpoint(PRETRAINED)
    print(f'{DATA}: train/val images and COCO json; {PRETRAINED} ({time.time() - t:.0f} s)')

    python = sys.executable
    if not args.skip_train:
        t = step('2/4 train (tools/train.py)')
        cmd = [python, 'tools/train.py', CONFIG, '--work-dir', args.work_dir]
        if args.epochs:
            cmd += ['--cfg-options', f'train_cfg.max_epochs={args.epochs}',
                    f'train_cfg.val_interval={args.epochs}']
        run_logged(cmd, os.path.join(args.work_dir, 'train_output.log'), SHOW)
        print(f'trained in {time.time() - t:.0f} s')

    t = step('3/4 evaluate the last checkpoint (tools/test.py, COCO bbox metric)')
    last = os.path.join(args.work_dir, 'last_checkpoint')
    if not os.path.isfile(last):
        raise SystemExit(f'no checkpoint in {args.work_dir}: run without --skip-train first')
    with open(last) as f:
        checkpoint = f.read().strip()
    log = os.path.join(args.work_dir, 'test_output.log')
    run_logged([python, 'tools/test.py', CONFIG, checkpoint, '--work-dir', args.work_dir], log, SHOW)
    with open(log) as f:
        found = re.findall(r'coco/bbox_mAP: ([\d.]+)\s+coco/bbox_mAP_50: ([\d.]+)', f.read())
    map_text = f'bbox mAP {found[-1][0]}, mAP@50 {found[-1][1]}' if found else 'see ' + log
    print(f'{checkpoint}: {map_text} ({time.time() - t:.0f} s)')

    step('4/4 memory and time of one training step: Dr²Net vs the baseline backbones')
    run_logged([python, 'tools/demo.py', '--compare-only'],
             os.path.join(args.work_dir, 'compare.log'), show=None)
    print(f'\ndemo finished in {(time.time() - start) / 60:.1f} min: {map_text} on the demo val set')


if __name__ == '__main__':
    main()
