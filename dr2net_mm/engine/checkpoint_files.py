"""Checkpoint files of a run on a local disk: which files are the run's checkpoints, whether one is
whole, which one to resume from, and the file operations :class:`SafeCheckpointHook` saves with.

A run's checkpoints are the files its checkpoint hook names: ``filename_tmpl.format(step)``
(MMEngine's default ``epoch_{}.pth`` or ``iter_{}.pth``) in the hook's folder. Nothing else in the
work dir (pretrained weights, copies, ``best_*.pth``) is a candidate to resume from, and they are
ordered by their step number, never by modification time.
"""
import logging
import os
import os.path as osp
import pickle
import re
import shutil
import string
import zipfile
from typing import List, Optional, Tuple

import torch
from mmengine.logging import print_log

__all__ = ['TMP_SUFFIX', 'POINTER', 'RESUME_KEYS', 'checkpoint_layout', 'checkpoint_steps',
           'checkpoint_problem', 'find_resume_checkpoint', 'load_checkpoint_file',
           'remove_stale_tmp']

TMP_SUFFIX = '.tmp'
POINTER = 'last_checkpoint'  # in the work dir: the path of the newest checkpoint (a hint)
RESUME_KEYS = ('meta', 'state_dict', 'message_hub')  # what MMEngine's Runner.resume reads


def checkpoint_layout(hook_cfg: Optional[dict], work_dir: str) -> Tuple[str, str]:
    """(folder, filename template) of the checkpoints a checkpoint hook config writes, as MMEngine's
    ``CheckpointHook`` chooses them: ``out_dir`` (default: the work dir; another ``out_dir`` gets
    the work dir's name appended) and ``filename_tmpl`` (default ``epoch_{}.pth`` when ``by_epoch``,
    else ``iter_{}.pth``)."""
    hook_cfg = hook_cfg or {}
    template = hook_cfg.get('filename_tmpl') or \
        ('epoch_{}.pth' if hook_cfg.get('by_epoch', True) else 'iter_{}.pth')
    folder = hook_cfg.get('out_dir') or work_dir
    if folder != work_dir:
        folder = osp.join(folder, osp.basename(work_dir.rstrip(osp.sep)))
    return folder, template


def _template_pattern(template: str) -> 're.Pattern':
    """``epoch_{}.pth`` → a pattern matching ``epoch_12.pth`` with the step as group 1."""
    parts, fields = [], 0
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(r'(\d+)')
            fields += 1
    if fields != 1:
        raise ValueError(f'checkpoint filename_tmpl {template!r} must hold exactly one {{}} field '
                         'for the step, e.g. epoch_{}.pth')
    return re.compile(''.join(parts) + r'\Z')


def _step(path: str, template: str) -> Optional[int]:
    match = _template_pattern(template).match(osp.basename(path))
    return int(match.group(1)) if match else None


def checkpoint_steps(folder: str, template: str) -> List[Tuple[int, str]]:
    """(step, path) of the files in ``folder`` named by ``template``, newest step first."""
    if not osp.isdir(folder):
        return []
    found = [(_step(name, template), osp.join(folder, name)) for name in os.listdir(folder)]
    return sorted(((step, path) for step, path in found if step is not None), reverse=True)


def load_checkpoint_file(path: str, mmap: bool = False):
    """``torch.load`` on the CPU, weights-only first (checkpoints of :class:`SafeCheckpointHook`);
    a checkpoint that needs full unpickling (written by MMEngine's own ``CheckpointHook``) is then
    loaded in full. ``mmap``: map the tensors instead of reading them (zip-format files)."""
    try:
        return torch.load(path, map_location='cpu', mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as error:
        if 'Weights only load failed' not in str(error):
            raise
    return torch.load(path, map_location='cpu', mmap=mmap, weights_only=False)


def _zip_problem(path: str) -> Optional[str]:
    """Why the zip archive (torch.save's format) at ``path`` is not whole; reads every byte and
    checks each part's CRC-32 (catches damage anywhere, not only a cut-off end)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:
                    continue  # saved without CRC-32s (torch's compute_crc32=False)
                with archive.open(info) as part:
                    while part.read(1 << 24):
                        pass
    except zipfile.BadZipFile as error:
        if 'CRC' in str(error):
            return (f'the file is corrupted: {error} (it changed after it was written; '
                    'the same size does not mean the same content)')
        return f'the file is truncated or corrupted (an incomplete zip archive: {error})'
    return None


def checkpoint_problem(path: str, required: Tuple[str, ...] = RESUME_KEYS) -> Optional[str]:
    """Why ``path`` is not a whole checkpoint holding the ``required`` keys (None when it is). Reads
    the whole file once (zip CRC-32s) and unpickles its structure with the tensors memory-mapped,
    not read: about one second per GB of checkpoint."""
    if not osp.isfile(path):
        return 'the file does not exist'
    with open(path, 'rb') as f:
        head = f.read(2)
    is_zip = head == b'PK'
    if not is_zip and head[:1] != b'\x80':  # \x80: torch's legacy (pickle) format
        return 'the file is not a PyTorch checkpoint'
    problem = _zip_problem(path) if is_zip else None
    if problem is not None:
        return problem
    try:
        checkpoint = load_checkpoint_file(path, mmap=is_zip)
    except Exception as error:  # noqa: BLE001 (any failure to load disqualifies the file)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
        return f'torch cannot load it ({type(error).__name__}: {first_line})'
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        return (f'it holds no {", ".join(missing)}: model weights, not a checkpoint written by a '
                'training run')
    return None


def _pointer_target(work_dir: str) -> Optional[str]:
    pointer = osp.join(work_dir, POINTER)
    if not osp.isfile(pointer):
        return None
    with open(pointer, 'rb') as f:
        return f.read(4096).decode('utf-8', errors='replace').strip()


def find_resume_checkpoint(work_dir: str, template: str = 'epoch_{}.pth',
                           folder: Optional[str] = None) -> Optional[str]:
    """The checkpoint to auto-resume from: the run's checkpoint files (``template`` in ``folder``,
    default the work dir) by step number, newest first; the first one that loads and holds
    :data:`RESUME_KEYS` wins, the others are skipped with a warning naming them. ``last_checkpoint``
    is a hint: the file it names competes by its step number, and is ignored (with a warning) when it
    is not named by ``template``. None when no candidate is whole."""
    folder = folder or work_dir
    candidates = checkpoint_steps(folder, template)
    target = _pointer_target(work_dir)
    if target:
        step = _step(target, template)
        if step is None:
            print_log(f'resume: ignoring {osp.join(work_dir, POINTER)}: it names {target[:200]!r}, '
                      f'not a checkpoint of this run ({template} in {folder})', logger='current',
                      level=logging.WARNING)
        elif osp.abspath(target) not in {osp.abspath(path) for _, path in candidates}:
            candidates = sorted(candidates + [(step, target)], reverse=True)
    for _, path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print_log(f'resume: skipping {path}: {problem}', logger='current', level=logging.WARNING)
    return None


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint file, or a checkpoint directory (a sharded checkpoint) with its files;
    one already gone (removed by another process) is fine."""
    try:
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def remove_stale_tmp(*folders: str) -> List[str]:
    """Remove the ``*.tmp`` files (and folders) an interrupted save left in ``folders``, with a
    warning each; returns their paths."""
    stale = sorted({osp.join(folder, name) for folder in folders if osp.isdir(folder)
                    for name in os.listdir(folder) if name.endswith(TMP_SUFFIX)})
    for path in stale:
        print_log(f'removing {path}, a file left incomplete by an interrupted or failed save',
                  logger='current', level=logging.WARNING)
        remove_checkpoint(path)
    return stale
