"""`make demo-seg`: UPerNet segmentors with Dr²Net Swin-T and Dr²Net ViT-S, on generated data, on a CPU.

1. generates the demo ADE20K-layout set (data/demo_ade20k: outdoor scenes with sky, grass,
   buildings, trees and cars; label PNGs with ADE20K ids) and randomly initialised stand-ins for the
   pretrained weights: Swin-T in the official release layout, ViT-S in MAE's (timm) layout;
2. trains configs/demo/upernet_dr2net_swin_t_demo.py with tools/train.py (mmseg's UPerNet, mmseg's
   ADE20KDataset and IoUMetric; AlphaBetaHook moves (α, β) from (1, 0.1) to (0.3, 0.7)), which
   validates at the end;
3. the same with configs/demo/upernet_dr2net_vit_s_demo.py (MultiLevelNeck + UPerHead);
4. prints the mIoU of both.

    python tools/demo_seg.py [--backbones swin vit] [--iters N] [--work-dir DIR]
"""
import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import run_logged, step  # noqa: E402

DATA = 'data/demo_ade20k'
CONFIGS = {'swin': 'configs/demo/upernet_dr2net_swin_t_demo.py',
           'vit': 'configs/demo/upernet_dr2net_vit_s_demo.py'}
SHOW = r'Iter\(train\) \[\s*\d*0/|mIoU:|^\||^\+|Error|error:'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbones', nargs='+', choices=sorted(CONFIGS), default=['swin', 'vit'])
    parser.add_argument('--iters', type=int, default=None, help='override max_iters (default 240)')
    parser.add_argument('--work-dir', default='work_dirs/demo_seg')
    args = parser.parse_args(argv)
    from mmengine.config import Config
    warmup = Config.fromfile(os.path.join(ROOT, CONFIGS['swin'])).param_scheduler[0]['end']
    if args.iters is not None and args.iters <= warmup:  # the ViT demo inherits the schedule
        parser.error(f'--iters {args.iters}: need more than the {warmup} warm-up iterations of the '
                     f'demo configs (e.g. --iters {4 * warmup})')
    start = time.time()
    os.chdir(ROOT)

    t = step('1/4 demo data and stand-in pretrained backbones')
    from dr2net_mm.demo.data import (make_demo_ade20k, write_swin_official_checkpoint,
                                     write_vit_timm_checkpoint)
    make_demo_ade20k(DATA)
    write_swin_official_checkpoint(os.path.join(DATA, 'swin_tiny_official_random.pth'))
    write_vit_timm_checkpoint(os.path.join(DATA, 'vit_small_mae_random.pth'))
    print(f'{DATA}: images/ and annotations/ (training, validation) and two checkpoints '
          f'({time.time() - t:.0f} s)')

    results = {}
    for number, name in enumerate(args.backbones, 2):
        t = step(f'{number}/4 train and validate {CONFIGS[name]} (tools/train.py)')
        work_dir = os.path.join(args.work_dir, name)
        os.makedirs(work_dir, exist_ok=True)
        cmd = [sys.executable, 'tools/train.py', CONFIGS[name], '--work-dir', work_dir]
        if args.iters:
            cmd += ['--cfg-options', f'train_cfg.max_iters={args.iters}',
                    f'train_cfg.val_interval={args.iters}', f'param_scheduler.1.end={args.iters}',
                    f'custom_hooks.0.end_iter={args.iters // 2}']
        output = run_logged(cmd, os.path.join(work_dir, 'train_output.log'), SHOW)
        found = re.findall(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)', output)
        results[name] = (f'mIoU {found[-1][1]}, aAcc {found[-1][0]}' if found else
                         f'no mIoU found, see {work_dir}/train_output.log')
        print(f'{name}: {results[name]} ({time.time() - t:.0f} s)')

    step('4/4 summary')
    for name, text in results.items():
        print(f'UPerNet + Dr²Net {"Swin-T" if name == "swin" else "ViT-S"}: {text} on the demo '
              'validation set (5 classes)')
    print(f'demo-seg finished in {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
    main()
