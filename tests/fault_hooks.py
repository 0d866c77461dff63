"""Hooks that inject faults into real training runs of the tools (imported by test configs through
``custom_imports``; the tests put this folder on PYTHONPATH), and :func:`damage_mid_file`."""
import errno
import os
import time
import zipfile

import torch
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class NaNImageHook(Hook):
    """Replace the first image of the batch of iteration ``at_iter`` (0-based) by NaNs."""

    def __init__(self, at_iter: int):
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            image = data_batch['inputs'][0]
            data_batch['inputs'][0] = torch.full(image.shape, float('nan'))


@HOOKS.register_module()
class StallCheckpointHook(Hook):
    """While the checkpoint of epoch ``epoch`` is being saved, create ``marker`` and stall (the test
    kills the process then)."""

    def __init__(self, epoch: int, marker: str):
        self.epoch, self.marker = epoch, marker

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta'].get('epoch') == self.epoch:
            open(self.marker, 'w').close()
            time.sleep(600)


@HOOKS.register_module()
class DiskFullHook(Hook):
    """The save at ``epoch`` (or at ``iter``) fails as on a full disk: MMEngine's file writer
    (``LocalBackend.put``) writes ``fraction`` of the checkpoint's bytes, then raises
    ``OSError(ENOSPC)``. Later saves write normally (space was freed)."""

    def __init__(self, epoch: int = None, iter: int = None, fraction: float = 0.5):
        self.at = ('epoch', epoch) if epoch is not None else ('iter', iter)
        self.fraction = fraction

    def before_save_checkpoint(self, runner, checkpoint):
        key, step = self.at
        if checkpoint['meta'].get(key) != step:
            return
        original, fraction = LocalBackend.put, self.fraction

        def put(backend, obj, filepath):
            LocalBackend.put = original  # one failure
            with open(filepath, 'wb') as f:
                f.write(obj[:int(len(obj) * fraction)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

        LocalBackend.put = put


@HOOKS.register_module()
class OutlierImageHook(Hook):
    """Scale the first image of the batch of iteration ``at_iter`` (0-based) by ``scale`` (an
    outlier image); print its path."""

    def __init__(self, at_iter: int, scale: float):
        self.at_iter, self.scale = at_iter, scale

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            data_batch['inputs'][0] = data_batch['inputs'][0].float() * self.scale
            path = data_batch['data_samples'][0].metainfo['img_path']
            print(f'OutlierImageHook: scaled {path} by {self.scale:g}', flush=True)


def damage_mid_file(path) -> None:
    """Invert 64 bytes inside the largest part of a checkpoint (a zip archive): the size and the
    zip directory stay as they were, only the part's CRC-32 no longer matches."""
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    offset = largest.header_offset + 512 + largest.file_size // 2
    with open(path, 'r+b') as f:
        f.seek(offset)
        data = f.read(64)
        f.seek(offset)
        f.write(bytes(255 - b for b in data))
