"""Crash-safe checkpoints and exact resume: :class:`SafeCheckpointHook`, :func:`find_resume_checkpoint`.

``SafeCheckpointHook`` is MMEngine's ``CheckpointHook`` (same arguments) with three changes:

* **atomic files**: each checkpoint is written to ``NAME.tmp``, flushed to disk (fsync) and renamed
  to ``NAME`` only when complete; ``last_checkpoint`` is rewritten the same way after the rename, so
  it only ever names a complete file; checkpoints beyond ``max_keep_ckpts`` are removed after that
  (MMEngine removes the old one before writing the new one). A checkpoint saved as a directory
  (DeepSpeed/FSDP sharded checkpoints) is published and removed the same way, as a whole;
* **random streams**: ``checkpoint['meta']['rng_states']`` holds the Python, NumPy, torch CPU and
  CUDA generator states and the training sampler's seed; a resumed run restores them where the
  uninterrupted run was (for iteration-based loops: after MMEngine's advance over the batches
  already trained on), so it continues bit for bit;
* **validation leaves training's random streams alone**: their states are put back after every
  validation run, so a run with validation in between equals one resumed without it.

:func:`find_resume_checkpoint` is the auto-resume of ``tools/train.py --resume``: the file
``last_checkpoint`` names, or else the newest complete ``*.pth`` of the work dir; truncated or
missing candidates are skipped with a warning.
"""
import glob
import logging
import os
import os.path as osp
import random
import shutil
import zipfile
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

__all__ = ['SafeCheckpointHook', 'find_resume_checkpoint', 'checkpoint_problem', 'rng_states',
           'set_rng_states']

RNG_KEY = 'rng_states'  # checkpoint['meta'][RNG_KEY]
TMP_SUFFIX = '.tmp'


def rng_states() -> dict:
    """The global random generators' states: Python, NumPy, torch CPU and (when initialised) CUDA."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore :func:`rng_states` (tensors may come back on the GPU from a checkpoint)."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'].cpu())
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states['cuda']])


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a complete checkpoint file (None when it looks complete). Cheap: reads the
    zip directory at the end of the file (torch.save's format), not the tensors."""
    if not osp.isfile(path):
        return 'the file does not exist'
    if zipfile.is_zipfile(path):
        return None
    with open(path, 'rb') as f:
        head = f.read(2)
    if head == b'PK':
        return 'the file is truncated or corrupted (an incomplete zip archive)'
    if head[:1] == b'\x80':
        return None  # torch's legacy (pickle) format: no cheap check
    return 'the file is not a PyTorch checkpoint'


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to auto-resume from: the one ``work_dir/last_checkpoint`` names, else the newest
    complete ``work_dir/*.pth``; None when there is none. Skipped candidates are logged."""
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            candidates.append(f.read().strip())
    candidates += sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime, reverse=True)
    for path in dict.fromkeys(candidates):  # in order, without repeats
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print_log(f'resume: skipping {path}: {problem}', logger='current', level=logging.WARNING)
    return None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: str) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` (atomic on one file system). ``tmp`` may be a
    directory (a sharded checkpoint): its files are flushed, and an old ``path`` directory is removed
    first (a rename does not replace a non-empty directory)."""
    files = [tmp] if osp.isfile(tmp) else \
        [osp.join(folder, name) for folder, _, names in os.walk(tmp) for name in names]
    for name in files:
        with open(name, 'rb') as f:
            os.fsync(f.fileno())
    if osp.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(osp.abspath(path)))


def _remove_checkpoint(path: str) -> None:
    """Remove a checkpoint file, or a checkpoint directory (a sharded checkpoint) with its files."""
    if osp.isfile(path):
        os.remove(path)
    elif osp.isdir(path):
        shutil.rmtree(path)


def _write_text(path: str, text: str) -> None:
    with open(path + TMP_SUFFIX, 'w') as f:
        f.write(text)
    _publish(path + TMP_SUFFIX, path)


def _train_sampler(runner):
    loader = runner.train_dataloader
    sampler = getattr(loader, 'sampler', None)
    if not hasattr(sampler, 'seed') and hasattr(loader, 'batch_sampler'):
        sampler = getattr(loader.batch_sampler, 'sampler', None)
    return sampler if hasattr(sampler, 'seed') else None


class _RestoreAfter:
    """An iterator wrapper: after ``skip`` items, restores the random ``states`` before the next."""

    def __init__(self, iterator, skip: int, states: dict):
        self.iterator, self.skip, self.states = iterator, skip, states

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0 and self.states is not None:
            set_rng_states(self.states)
            self.states = None
        self.skip -= 1
        return next(self.iterator)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` with atomic checkpoint files, removal of old ones only after the
    new one is in place, and the random streams saved and restored (see the module docstring).
    Checkpoints to a non-local ``out_dir`` (e.g. ``s3://``) are written as ``CheckpointHook`` does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded_rng = None
        self._val_rng = None

    # ------------------------------------------------------------------------------ saving
    # Follows CheckpointHook._save_checkpoint_with_step of mmengine 0.10.7 (mmengine/hooks/
    # checkpoint_hook.py, lines 413-461): the same keep_ckpt_ids bookkeeping (a second save at the same
    # step keeps the list), last_ckpt and keep_ckpt_ids in the message hub, the same
    # runner.save_checkpoint arguments, last_checkpoint written on the main process only, and an
    # outdated checkpoint removed as a file or, when it is a directory, as a directory tree (mmengine's
    # isfile/remove, isdir/rmtree). Only the order differs: write NAME.tmp, publish it as NAME, rewrite
    # last_checkpoint, and only then remove the outdated checkpoint (mmengine removes it first).
    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        runner.save_checkpoint(self.out_dir, filename + TMP_SUFFIX, self.file_client_args,
                               save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        _publish(self.last_ckpt + TMP_SUFFIX, self.last_ckpt)
        _write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in outdated:
            _remove_checkpoint(osp.join(self.out_dir, self.filename_tmpl.format(old)))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta[RNG_KEY] = rng_states()
        sampler = _train_sampler(runner)
        if sampler is not None:
            meta[RNG_KEY]['sampler_seed'] = sampler.seed

    # ------------------------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded_rng = (checkpoint.get('meta') or {}).get(RNG_KEY)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            for stale in glob.glob(osp.join(self.out_dir, '*' + TMP_SUFFIX)):
                print_log(f'removing {stale}, a checkpoint left incomplete by an interrupted run',
                          logger='current', level=logging.WARNING)
                _remove_checkpoint(stale)
        states, self._loaded_rng = self._loaded_rng, None
        if runner.iter == 0 and runner.epoch == 0:
            return  # a fresh run (or load_from without resume)
        if states is None:
            print_log('the resumed checkpoint has no random states (written without '
                      'SafeCheckpointHook): data order, augmentation and dropout streams restart',
                      logger='current', level=logging.WARNING)
            return
        sampler = _train_sampler(runner)
        if sampler is not None and 'sampler_seed' in states:
            sampler.seed = states['sampler_seed']
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):  # IterBasedTrainLoop: it first skips runner.iter
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, runner.iter, states)
        else:
            set_rng_states(states)

    # ------------------------------------------------------------------------------ validation
    def before_val(self, runner) -> None:
        self._val_rng = rng_states()

    def after_val(self, runner) -> None:
        if self._val_rng is not None:
            set_rng_states(self._val_rng)
            self._val_rng = None
