"""`make demo-video`: mmaction2 action recognition with a Dr²Net VideoMAE-layout video ViT (and, when
asked, Dr²Net Video Swin), on generated clips, on a CPU.

1. generates the demo clips (data/demo_clips: 1024 training and 128 validation mp4 files of a shape
   standing still, moving slowly, moving fast or blinking, in mmaction2's VideoDataset layout) and
   random stand-ins for the pretrained weights: a VideoMAE encoder in the official pretraining
   layout (converted on loading) and a 2D Swin in the official release layout (inflated to 3D on
   loading, as mmaction2 does);
2. trains configs/demo/videomae_dr2net_vit_s_demo.py with tools/train.py (mmaction2's
   Recognizer3D, VideoDataset and AccMetric; AlphaBetaHook moves (α, β) from (1, 0.1) to
   (0.3, 0.7));
3. evaluates its checkpoint with tools/test.py (top-1 accuracy on the validation clips);
4. with ``--backbones vit swin``, the same for configs/demo/video_dr2net_swin_t_demo.py;
5. prints the accuracies and wall times, and writes them to WORK_DIR/demo_video.json.

    python tools/demo_video.py [--backbones swin vit] [--epochs N] [--work-dir DIR]
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dr2net_mm.demo.runs import epoch_options, step, train_then_test  # noqa: E402

DATA = 'data/demo_clips'
CONFIGS = {'swin': 'configs/demo/video_dr2net_swin_t_demo.py',
           'vit': 'configs/demo/videomae_dr2net_vit_s_demo.py'}
NAMES = {'swin': 'Dr²Net Video Swin (48 wide)', 'vit': 'Dr²Net VideoMAE-layout ViT (192 wide)'}
SHOW = r'Epoch\(train\)\s+\[\d+\]\[\s*12/|Epoch\(val\)|Epoch\(test\)|acc/top1|Error|error:'
TOP1 = re.compile(r'acc/top1: ([\d.]+)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    # Video Swin started from random weights does not learn the demo task in its budget (README,
    # Video): it runs only when asked for.
    parser.add_argument('--backbones', nargs='+', choices=sorted(CONFIGS), default=['vit'])
    parser.add_argument('--epochs', type=int, default=None,
                        help='override max_epochs (default: the configs\'; 128 iterations each)')
    parser.add_argument('--work-dir', default='work_dirs/demo_video')
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        parser.error(f'--epochs {args.epochs}: need at least 2 (the first two warm up the lr)')
    start = time.time()
    os.chdir(ROOT)

    total = 2 + 2 * len(args.backbones)
    t = step(f'1/{total} demo clips and stand-in pretrained backbones')
    from dr2net_mm.demo.clips import DEMO_ACTIONS, make_demo_clips
    from dr2net_mm.demo.data import write_swin_official_checkpoint, write_videomae_official_checkpoint
    make_demo_clips(DATA, num_train=1024, num_val=128)
    write_swin_official_checkpoint(os.path.join(DATA, 'swin_48x2222_official_random.pth'),
                                   embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16))
    write_videomae_official_checkpoint(os.path.join(DATA, 'videomae_vit_192x4_official_random.pth'),
                                       embed_dims=192, depth=4, num_heads=3)
    print(f'{DATA}: train/ and val/ clips of {len(DEMO_ACTIONS)} classes {DEMO_ACTIONS} and two '
          f'checkpoints ({time.time() - t:.0f} s)')

    results = {}
    for number, name in enumerate(args.backbones):
        options = epoch_options(args.epochs, warmup_epochs=2) if args.epochs else []
        titles = (f'{2 * number + 2}/{total} train {CONFIGS[name]} (tools/train.py)',
                  f'{2 * number + 3}/{total} evaluate {{checkpoint}} (tools/test.py)')
        run = train_then_test(sys.executable, CONFIGS[name], os.path.join(args.work_dir, name),
                              options, SHOW, TOP1, titles)
        results[name] = dict(run, top1=run.pop('values')[0])

    step(f'{total}/{total} summary')
    chance = 1 / len(DEMO_ACTIONS)
    for name, result in results.items():
        print(f'{NAMES[name]}: top-1 {result["top1"]:.3f} on the {len(DEMO_ACTIONS)}-class demo '
              f'validation clips (chance {chance:.2f}); training {result["train_seconds"]:.0f} s, '
              f'evaluation {result["test_seconds"]:.0f} s')
    total = time.time() - start
    with open(os.path.join(args.work_dir, 'demo_video.json'), 'w') as f:
        json.dump(dict(results=results, total_seconds=total, classes=list(DEMO_ACTIONS)), f,
                  indent=2)
    print(f'demo-video finished in {total / 60:.1f} min ({args.work_dir}/demo_video.json)')


if __name__ == '__main__':
    main()
