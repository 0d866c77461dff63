"""Evaluate a checkpoint with the config's test loop and metric (mmdet, mmseg, dr2net_mm configs).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--show] [--show-dir DIR]
        [--wait-time SECONDS] [--tta] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}]

The flags mean what mmdet's or mmseg's ``tools/test.py`` makes them mean, chosen by the config's
``default_scope``:

* mmdet: ``--out X.pkl`` dumps the predictions (``DumpDetResults``); ``--show-dir DIR`` saves painted
  images under ``WORK_DIR/TIMESTAMP/DIR``; ``--tta`` uses the config's ``tta_model`` /
  ``tta_pipeline``, or mmdet's defaults (flip TTA, ``DetTTAModel``) when it has none.
* mmseg: ``--out DIR`` writes the predicted label maps as PNG files into DIR (the metric's
  ``output_dir``); ``--show-dir DIR`` saves painted images in ``DIR/vis_data/vis_image``, one every
  ``default_hooks.visualization.interval`` (mmseg: 50) images, as mmseg does (``--cfg-options
  default_hooks.visualization.interval=1`` paints all; mmseg's hook builds the training dataloader,
  so the training data must be there too); ``--tta`` uses the config's ``tta_model`` /
  ``tta_pipeline``.
* other configs (the point-cloud ones): ``--out X.pkl`` dumps the predictions (``DumpResults``);
  ``--show``, ``--show-dir`` and ``--tta`` are refused.

``--show`` opens a window per image for ``--wait-time`` seconds. Dr²Net backbones evaluate with the
(α, β) stored in the checkpoint (they are model buffers).
"""
import argparse
import os
import sys
from copy import deepcopy

from mmengine.config import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dr2net_mm  # noqa: E402,F401  (registers Dr2NetSwin, Dr2NetViT, AlphaBetaHook)
from dr2net_mm.runner_utils import (  # noqa: E402
    OwnCheckpointRunner, add_runner_arguments, coefficients_summary, finish_distributed,
    load_config, parse_runner_arguments, require_data, setup_cpu_distributed)
from dr2net_mm.engine.checkpoint_files import checkpoint_problem  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where logs and metrics go')
    parser.add_argument('--out', help='mmdet (and point) configs: a .pkl file for the predictions; '
                        'mmseg configs: a folder for the predicted label maps')
    parser.add_argument('--show', action='store_true', help='show the predictions in a window')
    parser.add_argument('--show-dir', help='save painted predictions (mmdet: under '
                        'WORK_DIR/TIMESTAMP/SHOW_DIR; mmseg: in SHOW_DIR)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per image of --show')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    add_runner_arguments(parser, 'test_dataloader.batch_size=1')
    return parse_runner_arguments(parser, argv)


def scope_of(cfg) -> str:
    """'mmdet', 'mmseg' or 'other': whose tools/test.py the flags follow."""
    scope = cfg.get('default_scope')
    return scope if scope in ('mmdet', 'mmseg') else 'other'


def enable_visualization(cfg, args, scope: str) -> None:
    """--show / --show-dir as mmdet and mmseg do it: turn on the config's visualization hook."""
    if scope == 'other':
        raise SystemExit('--show and --show-dir need an mmdet or mmseg config (default_scope '
                         f"'mmdet' or 'mmseg'); {args.config} has default_scope="
                         f"{cfg.get('default_scope')!r}")
    hook = (cfg.get('default_hooks') or {}).get('visualization')
    if hook is None:
        raise SystemExit(f'--show/--show-dir: {args.config} has no default_hooks.visualization; '
                         f"add e.g. visualization=dict(type='{'Det' if scope == 'mmdet' else 'Seg'}"
                         "VisualizationHook') to default_hooks")
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def default_tta_pipeline(cfg, pack: dict) -> list:
    """The test pipeline with its last step (packing) replaced by flip TTA: mmdet's default."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    pipeline = deepcopy(dataset.pipeline)
    pipeline[-1] = dict(type='TestTimeAug', transforms=[
        [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)], [pack]])
    return pipeline


def enable_tta(cfg, args, scope: str) -> None:
    """--tta: the config's ``tta_model`` around the model and ``tta_pipeline`` for the test set."""
    if scope == 'other':
        raise SystemExit(f'--tta needs an mmdet or mmseg config; {args.config} has default_scope='
                         f"{cfg.get('default_scope')!r}")
    if scope == 'mmdet':
        cfg.setdefault('tta_model', ConfigDict(type='DetTTAModel', tta_cfg=dict(
            nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
        if 'tta_pipeline' not in cfg:
            cfg.tta_pipeline = default_tta_pipeline(cfg, dict(
                type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                 'scale_factor', 'flip', 'flip_direction')))
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise SystemExit(f'--tta: {args.config} defines no {missing} (mmseg configs take them from '
                         "mmseg's _base_ dataset and runtime files)")
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def add_output(cfg, args, scope: str) -> None:
    """--out: mmdet and point configs dump the predictions to a pickle, mmseg configs write the
    predicted label maps into a folder (IoUMetric's ``output_dir``)."""
    if scope == 'mmseg':
        if args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit(f'--out {args.out}: for mmseg configs --out is a folder for the '
                             'predicted label maps (as in mmseg\'s tools/test.py), not a .pkl file')
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
        return
    if not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'--out must name a .pkl file for this config, got {args.out}')
    dump = 'DumpDetResults' if scope == 'mmdet' else 'DumpResults'
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [
        cfg.test_evaluator]
    cfg.test_evaluator = list(evaluators) + [dict(type=dump, out_file_path=args.out)]


def require_evaluable(path: str) -> None:
    """Exit with a message naming ``path`` when it is missing, damaged or not loadable by torch
    (model weights alone are fine: MMEngine evaluates a bare state dict too)."""
    problem = checkpoint_problem(path, required=())
    if problem is not None:
        raise SystemExit(f'tools/test.py: {path} cannot be evaluated: {problem}. Give a whole '
                         'checkpoint file (the last_checkpoint file of a work dir names the newest '
                         'one of its run).')


def main(argv=None):
    args = parse_args(argv)
    require_evaluable(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    scope = scope_of(cfg)
    if args.show or args.show_dir:
        enable_visualization(cfg, args, scope)
    if args.tta:
        enable_tta(cfg, args, scope)
    if args.out:
        add_output(cfg, args, scope)
    loaders = ('test_dataloader', )
    if scope == 'mmseg' and (args.show or args.show_dir):
        # mmseg's SegVisualizationHook reads runner.iter, which builds the training dataloader.
        loaders += ('train_dataloader', )
    require_data(cfg, loaders)
    setup_cpu_distributed(cfg)
    # CHECKPOINT is one a run wrote: weights-only, or in full for one of MMEngine's own
    # CheckpointHook (see OwnCheckpointRunner).
    runner = OwnCheckpointRunner.from_cfg(cfg)
    runner.test()
    finish_distributed()
    coefficients = coefficients_summary(runner.model)
    if coefficients:
        print(f'evaluated with {coefficients} (from the checkpoint)')


if __name__ == '__main__':
    main()
