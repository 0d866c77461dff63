"""Hooks that inject faults into real training runs of the tools (imported by test configs through
``custom_imports``; the tests put this folder on PYTHONPATH)."""
import os
import time

import torch
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
