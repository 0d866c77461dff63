"""Evaluate a checkpoint with the config's test loop and metric (mmdet, mmseg, dr2net_mm configs).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Dr²Net backbones evaluate with the (α, β) stored in the checkpoint (they are model buffers).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dr2net_mm  # noqa: E402,F401  (registers Dr2NetSwin, Dr2NetViT, AlphaBetaHook)
from dr2net_mm.runner_utils import (  # noqa: E402
    OwnCheckpointRunner, add_runner_arguments, coefficients_summary, finish_distributed,
    load_config, parse_runner_arguments, require_checkpoint_file, require_data,
    setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics go')
    parser.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    add_runner_arguments(parser, 'test_dataloader.batch_size=1')
    return parse_runner_arguments(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    require_checkpoint_file(args.checkpoint, 'test')
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit(f'--out must name a .pkl file, got {args.out}')
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [
            cfg.test_evaluator]
        cfg.test_evaluator = list(evaluators) + [dict(type='DumpResults', out_file_path=args.out)]
    require_data(cfg, ('test_dataloader', ))
    setup_cpu_distributed(cfg)
    # CHECKPOINT is one tools/train.py wrote (MMEngine's format): unpickled in full.
    runner = OwnCheckpointRunner.from_cfg(cfg)
    runner.test()
    finish_distributed()
    coefficients = coefficients_summary(runner.model)
    if coefficients:
        print(f'evaluated with {coefficients} (from the checkpoint)')


if __name__ == '__main__':
    main()
