"""Train a model from an MMEngine config: mmdet detectors, mmseg segmentors and dr2net_mm models.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--auto-scale-lr]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed: ``tools/dist_train.sh CONFIG NUM_PROCESSES`` (torchrun). On machines without a GPU the
processes talk over gloo; ``DR2NET_DIST_BACKEND=gloo|nccl`` forces a backend.
"""
import argparse
import os
import sys

from mmengine.runner import Runner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dr2net_mm  # noqa: E402,F401  (registers Dr2NetSwin, Dr2NetViT, AlphaBetaHook)
from dr2net_mm.engine.checkpoints import CheckpointSaveError  # noqa: E402
from dr2net_mm.models import PretrainedMismatchError  # noqa: E402
from dr2net_mm.runner_utils import (  # noqa: E402
    OwnCheckpointRunner, add_runner_arguments, finish_distributed, load_config,
    parse_runner_arguments, remove_stale_tmp_files, require_amp_device, require_data, set_resume,
    setup_cpu_distributed, use_safe_checkpoints)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model from a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: '
                        'work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT, or from the newest complete checkpoint in '
                        'the work dir when no path is given (none: start at iteration 0)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by total batch size / base_batch_size')
    add_runner_arguments(parser, 'train_cfg.max_iters=10')
    return parse_runner_arguments(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print('AMP is already enabled in the config')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` in '
                             'the config (the total batch size its learning rate was tuned for)')
        cfg.auto_scale_lr.enable = True
    require_amp_device(cfg)
    use_safe_checkpoints(cfg)
    remove_stale_tmp_files(cfg)  # before the Runner: on a full disk, building it needs the space
    set_resume(cfg, args.resume)
    require_data(cfg, ('train_dataloader', 'val_dataloader'))
    setup_cpu_distributed(cfg)
    # Resuming reads a checkpoint a run wrote: weights-only, or in full for one of MMEngine's own
    # CheckpointHook (see OwnCheckpointRunner); anything else torch's way.
    runner = (OwnCheckpointRunner if cfg.get('resume') else Runner).from_cfg(cfg)
    try:
        runner.train()
    except PretrainedMismatchError as error:
        raise SystemExit(f'pretrained weights refused: {error}')
    except CheckpointSaveError as error:
        raise SystemExit(str(error))
    finish_distributed()


if __name__ == '__main__':
    main()
