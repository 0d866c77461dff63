"""Config handling shared by ``tools/train.py`` and ``tools/test.py`` (mmdet and mmseg configs alike)."""
import logging
import os
import os.path as osp
import pickle
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmengine.runner import Runner

DIST_BACKEND_ENV = 'DR2NET_DIST_BACKEND'


# torch >= 2.6 reads these at every torch.load that does not pass weights_only itself.
NO_WEIGHTS_ONLY_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
WEIGHTS_ONLY_ENV = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'


@contextmanager
def unpickling_in_full() -> Iterator[None]:
    """Within the block, ``torch.load`` calls that do not choose ``weights_only`` unpickle
    everything, as before torch 2.6. Still needed for checkpoints written by MMEngine's own
    ``CheckpointHook`` (mmdet's or mmseg's ``train.py``, or this package before its checkpoints
    became weights-only loadable): besides tensors they pickle the message hub's ``HistoryBuffer``
    objects and numpy arrays (rebuilt through ``builtins.getattr``), which torch's weights-only
    loader refuses and no allow-list can make safe (allowing ``getattr`` would allow anything).
    MMEngine 0.10 passes no ``weights_only``. A ``TORCH_FORCE_(NO_)WEIGHTS_ONLY_LOAD`` set by the
    user wins."""
    if NO_WEIGHTS_ONLY_ENV in os.environ or WEIGHTS_ONLY_ENV in os.environ:
        yield
        return
    os.environ[NO_WEIGHTS_ONLY_ENV] = '1'
    try:
        yield
    finally:
        os.environ.pop(NO_WEIGHTS_ONLY_ENV, None)


class OwnCheckpointRunner(Runner):
    """MMEngine's Runner, except for the checkpoint it resumes from or is told to load
    (``load_from``): loaded with torch's default first (weights-only since torch 2.6, which reads
    every checkpoint ``SafeCheckpointHook`` writes); one that torch refuses as not weights-only
    (written by MMEngine's own ``CheckpointHook``) is then unpickled in full, with a warning (see
    :func:`unpickling_in_full`). ``tools/train.py`` uses it only to resume (a checkpoint a run
    wrote), ``tools/test.py`` for the checkpoint it evaluates. Every other load (pretrained
    backbone weights, ``load_from`` of a new training) keeps torch's default. Load only
    checkpoints you trust."""

    def load_or_resume(self) -> None:
        try:
            super().load_or_resume()
        except pickle.UnpicklingError as error:
            if 'Weights only load failed' not in str(error):
                raise
            from mmengine.logging import print_log
            print_log(f'{self._load_from}: torch refuses it as not weights-only (a checkpoint of '
                      'MMEngine\'s own CheckpointHook: numpy arrays, HistoryBuffer objects); '
                      'loading it in full, as torch < 2.6 did. Load only checkpoints you trust.',
                      logger='current', level=logging.WARNING)
            with unpickling_in_full():
                super().load_or_resume()


def add_runner_arguments(parser, cfg_example: str) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local_rank``, as mmdet/mmseg tools take them."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help=f'override config entries, e.g. {cfg_example}')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_arguments(parser, argv=None):
    """Parse, and export ``--local_rank`` as LOCAL_RANK for launchers that pass it as argument."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """Read ``path``, apply ``--cfg-options``, set the work dir (default ``work_dirs/<config name>``)
    and the launcher, and choose the distributed backend (see :func:`choose_dist_backend`)."""
    if not osp.isfile(path):
        raise SystemExit(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    expand_vis_backends(cfg)
    cfg.launcher = launcher
    if launcher != 'none':
        choose_dist_backend(cfg)
    return cfg


def expand_vis_backends(cfg: Config) -> None:
    """Let ``--cfg-options visualizer.vis_backends=LocalVisBackend,TensorboardVisBackend`` work:
    MMEngine's ``DictAction`` cannot parse dicts, so backend names become ``dict(type=NAME)``. A
    visualizer given only through such an option gets MMEngine's ``Visualizer`` type."""
    visualizer = cfg.get('visualizer')
    if not isinstance(visualizer, dict) or 'vis_backends' not in visualizer:
        return
    backends = visualizer['vis_backends']
    backends = backends if isinstance(backends, (list, tuple)) else [backends]
    for backend in backends:
        if not isinstance(backend, (str, dict)) or (isinstance(backend, str) and not backend):
            raise SystemExit(f'visualizer.vis_backends: {backend!r} is neither a backend name (e.g. '
                             'TensorboardVisBackend) nor a dict')
    visualizer['vis_backends'] = [dict(type=b) if isinstance(b, str) else b for b in backends]
    visualizer.setdefault('type', 'Visualizer')


def choose_dist_backend(cfg: Config) -> str:
    """Distributed runs use NCCL on GPUs and gloo on CPU-only machines. ``DR2NET_DIST_BACKEND``
    (e.g. ``gloo``) overrides both; so does an explicit ``env_cfg.dist_cfg.backend`` in the config
    when the variable is unset and a GPU is present."""
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict(backend='nccl'))
    forced = os.environ.get(DIST_BACKEND_ENV)
    if forced:
        dist_cfg.backend = forced
    elif not torch.cuda.is_available():
        dist_cfg.backend = 'gloo'
    return dist_cfg.backend


def setup_cpu_distributed(cfg: Config) -> bool:
    """On a machine without CUDA, prepare a ``--launcher pytorch`` run (torchrun sets RANK,
    WORLD_SIZE, MASTER_ADDR/PORT): MMEngine's ``init_dist`` would call ``torch.cuda.set_device`` and
    its DDP wrapper would pass ``device_ids=[LOCAL_RANK]``, both GPU-only. So the gloo process group
    is created here (the Runner then keeps it) and the model is wrapped with ``device_ids=None``.
    Returns True when it did so."""
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend=cfg.env_cfg.dist_cfg.get('backend', 'gloo'),
                                rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(type='MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    return True


def coefficients_summary(model) -> str:
    """``(alpha, beta) = (a, b)`` of the Dr²Net modules in ``model`` (wrappers unwrapped), or ''."""
    while hasattr(model, 'module'):
        model = model.module
    pairs = sorted({tuple(round(float(v), 6) for v in m.coefficients) for m in model.modules()
                    if isinstance(getattr(m, 'coefficients', None), tuple)})
    return ', '.join(f'(alpha, beta) = ({a:g}, {b:g})' for a, b in pairs)


def finish_distributed() -> None:
    """Tear the process group down before the interpreter exits (after all ranks are done): a gloo
    group left alive can abort a finished process at exit ("terminate called without an active
    exception"), and MMEngine does not destroy it."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _datasets(dataset: dict) -> Iterator[dict]:
    """A dataset config and the ones it wraps (RepeatDataset, ConcatDataset, ClassBalanced...)."""
    if not isinstance(dataset, dict):
        return
    yield dataset
    yield from _datasets(dataset.get('dataset'))
    for inner in dataset.get('datasets', []) or []:
        yield from _datasets(inner)


# data_prefix keys whose folder every pipeline reads (images, videos, point-cloud rooms). Other keys
# (e.g. mmdet's `seg`: panoptic PNGs that only a panoptic pipeline loads) may be unused by a config, so a
# missing one is a warning: mmdet's and mmseg's own train.py do not check them either.
READ_PREFIXES = ('img', 'img_path', 'video', 'rooms')


def missing_data_paths(cfg: Config, loaders: Tuple[str, ...] = ('train_dataloader',
                                                                 'val_dataloader'),
                       required: bool = True) -> List[str]:
    """Files/folders named by the datasets of ``loaders`` that do not exist, under ``data_root``:
    with ``required`` the annotation files and the :data:`READ_PREFIXES` folders, otherwise the
    other ``data_prefix`` folders."""
    missing = []
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        for dataset in _datasets(loader_cfg.get('dataset')):
            root = dataset.get('data_root') or ''
            paths = [dataset['ann_file']] if required and dataset.get('ann_file') else []
            prefix = dataset.get('data_prefix') or {}
            paths += [p for key, p in prefix.items() if isinstance(p, str) and p
                      and (key in READ_PREFIXES) == required]
            for path in paths:
                full = path if osp.isabs(path) or '://' in path else osp.join(root, path)
                if '://' not in full and not osp.exists(full):
                    missing.append(f'{loader}: {full}')
    return missing


def require_data(cfg: Config, loaders: Tuple[str, ...]) -> None:
    """Exit with a clear message (no traceback) when the config's annotation files or image/video
    folders are missing; warn about other missing ``data_prefix`` folders."""
    from mmengine.logging import print_log
    unchecked = missing_data_paths(cfg, loaders, required=False)
    if unchecked:
        print_log('data_prefix folders not found (fine if the pipeline does not read them, e.g. '
                  'panoptic maps for an instance-segmentation pipeline): ' + ', '.join(unchecked),
                  logger='current', level=logging.WARNING)
    missing = missing_data_paths(cfg, loaders)
    if missing:
        lines = '\n  '.join(missing)
        raise SystemExit(
            f'dataset not found:\n  {lines}\n'
            'Put the dataset where the config expects it (COCO 2017: data/coco/annotations/'
            'instances_{train,val}2017.json, data/coco/train2017/, data/coco/val2017/; ADE20K: '
            'data/ade/ADEChallengeData2016/; S3DIS: data/s3dis/s3disfull/raw/Area_k_*.npy, see '
            'docs/s3dis.md) or point the config at it with --cfg-options '
            'train_dataloader.dataset.data_root=PATH val_dataloader.dataset.data_root=PATH ...\n'
            'No dataset at hand? `make demo` (detection), `make demo-seg` (segmentation) and '
            '`make demo-points` (point clouds) generate small ones and train on them.')


def require_checkpoint_file(path: str, option: str) -> None:
    """Exit with a message naming ``path`` when it is missing, damaged, or not a checkpoint a
    training run wrote (``--resume PATH``)."""
    from .engine.checkpoint_files import checkpoint_problem
    problem = checkpoint_problem(path)
    if problem is not None:
        raise SystemExit(f'{option}: cannot use checkpoint {path}: {problem}. Give a complete '
                         'checkpoint file (with --resume and no path, the newest complete one of the '
                         'work dir is taken).')


def checkpoint_layout_of(cfg: Config) -> Tuple[str, str]:
    """(folder, filename template) of the config's checkpoint hook (``default_hooks.checkpoint``)."""
    from .engine.checkpoint_files import checkpoint_layout
    return checkpoint_layout((cfg.get('default_hooks') or {}).get('checkpoint'), cfg.work_dir)


def remove_stale_tmp_files(cfg: Config) -> None:
    """Remove the ``.tmp`` files an interrupted or failed save left in the work dir and the
    checkpoint folder, before the Runner is built: on a full disk, building it (log files, the
    config dump) would fail first."""
    from .engine.checkpoint_files import remove_stale_tmp
    folder, _ = checkpoint_layout_of(cfg)
    remove_stale_tmp(*[path for path in {cfg.work_dir, folder} if '://' not in path])


def use_safe_checkpoints(cfg: Config) -> None:
    """Replace MMEngine's ``CheckpointHook`` in ``default_hooks`` by ``SafeCheckpointHook`` (same
    arguments; atomic files, random states for exact resume)."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', None):
        hook['type'] = 'SafeCheckpointHook'


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` (``'auto'``: the newest whole checkpoint of the run by step number, see
    :func:`~dr2net_mm.engine.checkpoint_files.find_resume_checkpoint`, or a fresh start with a
    warning when there is none) or ``--resume PATH`` (checked first)."""
    from mmengine.logging import print_log

    from .engine.checkpoint_files import find_resume_checkpoint
    if resume is None:
        return
    if resume != 'auto':
        require_checkpoint_file(resume, '--resume')
        cfg.resume, cfg.load_from = True, resume
        return
    folder, template = checkpoint_layout_of(cfg)
    found = find_resume_checkpoint(cfg.work_dir, template, folder)
    if found is None:
        print_log(f'--resume: no complete checkpoint in {cfg.work_dir}; training starts at '
                  'iteration 0', logger='current', level=logging.WARNING)
        cfg.resume, cfg.load_from = False, None
        return
    print_log(f'--resume: resuming from {found}', logger='current')
    cfg.resume, cfg.load_from = True, found


def require_amp_device(cfg: Config) -> None:
    """Exit with a clear message when the config asks for AMP (``AmpOptimWrapper``, e.g. from
    ``--amp``) on a machine without a CUDA GPU: MMEngine's AMP wrapper needs one."""
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        raise SystemExit('--amp (AmpOptimWrapper) needs a CUDA GPU and this machine has none '
                         '(MMEngine\'s AmpOptimWrapper supports CUDA, NPU, MLU and MUSA devices '
                         'only). Train without --amp: on CPU the run is float32.')
