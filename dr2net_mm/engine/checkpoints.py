"""Crash-safe checkpoints and exact resume: :class:`SafeCheckpointHook`, :func:`find_resume_checkpoint`.

``SafeCheckpointHook`` is MMEngine's ``CheckpointHook`` (same arguments, plus ``on_save_error``) with
these changes:

* **atomic files**: each checkpoint is written to ``NAME.tmp``, flushed to disk (fsync) and renamed
  to ``NAME`` only when complete; ``last_checkpoint`` is rewritten the same way after the rename, so
  it only ever names a complete file; checkpoints beyond ``max_keep_ckpts`` are removed after that
  (MMEngine removes the old one before writing the new one), and so are older files of the run's
  name template that an interrupted run left behind (orphans). A checkpoint saved as a directory
  (DeepSpeed/FSDP sharded checkpoints) is published and removed the same way, as a whole. The disk
  needs room for ``max_keep_ckpts + 1`` checkpoints;
* **a failed save** (disk full or any other ``OSError``) removes its ``.tmp``, leaves the previous
  checkpoint and ``last_checkpoint`` as they were and logs the path, the bytes needed and the bytes
  free; ``on_save_error='stop'`` (default) then ends the run (:class:`CheckpointSaveError`),
  ``'warn'`` trains on and tries again at the next interval;
* **random streams**: ``checkpoint['meta']['rng_states']`` holds the Python, NumPy, torch CPU and
  CUDA generator states and the training sampler's seed; a resumed run restores them where the
  uninterrupted run was (for iteration-based loops: after MMEngine's advance over the batches
  already trained on), so it continues bit for bit;
* **weights-only loadable**: numpy values and the message hub's ``HistoryBuffer`` objects are saved
  as tensors and plain values (:mod:`.plain_state`) and turned back when the checkpoint is loaded,
  so ``torch.load(path)`` with torch's default ``weights_only=True`` (torch >= 2.6) reads it, e.g. in
  mmdet's and mmseg's own ``tools/test.py``;
* **validation leaves training's random streams alone**: their states are put back after every
  validation run, so a run with validation in between equals one resumed without it.

:func:`find_resume_checkpoint` (in :mod:`.checkpoint_files`) is the auto-resume of
``tools/train.py --resume``: the run's checkpoint files by step number, skipping with a warning the
ones that do not load.
"""
import logging
import os
import os.path as osp
import random
import shutil
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .checkpoint_files import (POINTER, TMP_SUFFIX, checkpoint_problem, checkpoint_steps,
                               find_resume_checkpoint, remove_checkpoint, remove_stale_tmp)
from .plain_state import from_plain, to_plain

__all__ = ['SafeCheckpointHook', 'CheckpointSaveError', 'find_resume_checkpoint',
           'checkpoint_problem', 'rng_states', 'set_rng_states']

RNG_KEY = 'rng_states'  # checkpoint['meta'][RNG_KEY]
SAVE_ERROR_CHOICES = ('stop', 'warn')


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (``on_save_error='stop'``); the message says why and what
    is left on disk. ``tools/train.py`` ends with it, without a traceback."""


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



def _size(path: str) -> int:
    """Bytes of a file, or of the files of a directory (0 when missing)."""
    if osp.isfile(path):
        return osp.getsize(path)
    return sum(osp.getsize(osp.join(folder, name)) for folder, _, names in os.walk(path)
               for name in names)


def _bytes(count: int) -> str:
    return f'{count} bytes ({count / 2**20:.1f} MiB)'


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` with atomic checkpoint files, removal of old ones only after the
    new one is in place, failed saves that leave the previous checkpoint as it was, weights-only
    loadable contents and the random streams saved and restored (see the module docstring).
    Checkpoints to a non-local ``out_dir`` (e.g. ``s3://``) are written as ``CheckpointHook`` does.

    Args:
        on_save_error: ``'stop'`` (end the run with :class:`CheckpointSaveError`) or ``'warn'`` (log
            it and train on; the next save is tried at the next interval) when a save fails with
            an ``OSError`` such as a full disk.
        *args, **kwargs: ``CheckpointHook``'s arguments.
    """

    def __init__(self, *args, on_save_error: str = 'stop', **kwargs):
        if on_save_error not in SAVE_ERROR_CHOICES:
            raise ValueError(f'SafeCheckpointHook: on_save_error={on_save_error!r}; use \'stop\' '
                             '(end the run with a message) or \'warn\' (log it, train on and try '
                             'again at the next interval)')
        super().__init__(*args, **kwargs)
        self.on_save_error = on_save_error
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
        previous = self.last_ckpt, list(getattr(self, 'keep_ckpt_ids', ()))
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        try:
            runner.save_checkpoint(self.out_dir, filename + TMP_SUFFIX, self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args,
                                   **self.args)
            if is_main_process():
                _publish(self.last_ckpt + TMP_SUFFIX, self.last_ckpt)
        except OSError as error:
            self._save_failed(runner, error, previous)
            return
        if not is_main_process():
            return
        self._write_pointer(runner)
        for old in outdated:
            remove_checkpoint(osp.join(self.out_dir, self.filename_tmpl.format(old)))
        self._remove_orphans()

    def _write_pointer(self, runner) -> None:
        """Rewrite ``last_checkpoint``; a failure only warns (resume goes by step number)."""
        pointer = osp.join(runner.work_dir, POINTER)
        try:
            _write_text(pointer, self.last_ckpt)
        except OSError as error:
            remove_checkpoint(pointer + TMP_SUFFIX)
            print_log(f'SafeCheckpointHook: could not rewrite {pointer} ({error}); {self.last_ckpt} '
                      'is complete, and --resume finds it by its step number', logger='current',
                      level=logging.WARNING)

    def _remove_orphans(self) -> None:
        """Remove the files of the run's name template older than every kept checkpoint (left by a
        run killed between publishing a checkpoint and removing the outdated one)."""
        if self.max_keep_ckpts <= 0 or not self.keep_ckpt_ids:
            return
        oldest_kept = min(self.keep_ckpt_ids)
        for step, path in checkpoint_steps(self.out_dir, self.filename_tmpl):
            if step < oldest_kept:
                print_log(f'removing {path}: older than the {self.max_keep_ckpts} checkpoint(s) '
                          'max_keep_ckpts keeps (left behind by an interrupted run)',
                          logger='current', level=logging.WARNING)
                remove_checkpoint(path)

    def _save_failed(self, runner, error: OSError, previous) -> None:
        """Undo a failed save: remove its ``.tmp``, restore the bookkeeping, then stop or warn with
        the path, the bytes needed and the bytes free."""
        path = self.last_ckpt
        written = _size(path + TMP_SUFFIX)
        remove_checkpoint(path + TMP_SUFFIX)
        self.last_ckpt, kept = previous
        if self.last_ckpt is not None:
            runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        if self.max_keep_ckpts > 0:
            self.keep_ckpt_ids.clear()
            self.keep_ckpt_ids.extend(kept)
            runner.message_hub.update_info('keep_ckpt_ids', kept)
        before = next((p for _, p in checkpoint_steps(self.out_dir, self.filename_tmpl)), None)
        needed = max(written, _size(before) if before else 0)
        basis = 'the size of the previous checkpoint' if before and needed > written else \
            'the bytes written before the error'
        free = shutil.disk_usage(self.out_dir).free
        message = (f'SafeCheckpointHook: could not save checkpoint {path}: {error}. It needs about '
                   f'{_bytes(needed)} ({basis}); {_bytes(free)} are free in {self.out_dir} now. '
                   f'The partial file is removed; {before or "no earlier checkpoint"} and '
                   f'{osp.join(runner.work_dir, POINTER)} are as they were.')
        if self.on_save_error == 'warn':
            print_log(message + ' Training goes on (on_save_error=\'warn\'); the next save is '
                      'tried at the next interval.', logger='current', level=logging.WARNING)
            return
        message += (' Free some space (a run needs room for max_keep_ckpts + 1 checkpoints) and '
                    'continue with `tools/train.py CONFIG --resume`.')
        print_log(message, logger='current', level=logging.ERROR)
        raise CheckpointSaveError(message)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta[RNG_KEY] = rng_states()
        sampler = _train_sampler(runner)
        if sampler is not None:
            meta[RNG_KEY]['sampler_seed'] = sampler.seed
        # the lowest priority: the other hooks have put their state in already
        for key in list(checkpoint):
            checkpoint[key] = to_plain(checkpoint[key])

    # ------------------------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # before Runner.resume reads checkpoint['message_hub'] (mmengine 0.10.7 runner.py: resume
        # calls load_checkpoint, whose after_load_checkpoint hooks run before it returns)
        for key in list(checkpoint):
            checkpoint[key] = from_plain(checkpoint[key])
        self._loaded_rng = (checkpoint.get('meta') or {}).get(RNG_KEY)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            remove_stale_tmp(self.out_dir)
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
