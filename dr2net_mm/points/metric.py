"""``PointSegMetric``: mean IoU, per-class IoU and overall accuracy of per-point labels.

Over all evaluated points (every point of every room, summed into one confusion matrix ``C``, rows
ground truth, columns prediction; points labelled ``ignore_index`` are left out)::

    IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c])      (TP / (TP + FP + FN))
    mIoU  = mean of IoU_c over the classes present in the ground truth or the predictions
    oAcc  = sum_c C[c, c] / sum C                                   (overall point accuracy)
    mAcc  = mean over classes present in the ground truth of C[c, c] / sum_j C[c, j]

A class absent from both the ground truth and the predictions has no IoU (0 / 0): it is reported as
NaN and left out of the mean (S3DIS Area 5 has all 13 classes, so this matters only for small sets).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.registry import METRICS

from .s3dis import CLASSES

__all__ = ['PointSegMetric', 'confusion_matrix', 'segmentation_scores']


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: Optional[int] = 255) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, ``[i, j]`` = points of class i predicted as j."""
    gt, pred = np.asarray(gt).reshape(-1), np.asarray(pred).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth and prediction differ in size: {gt.shape} vs {pred.shape}')
    keep = gt != ignore_index if ignore_index is not None else np.ones_like(gt, dtype=bool)
    gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    bad = (gt < 0) | (gt >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(f'labels outside 0..{num_classes - 1} (and not ignore_index={ignore_index}): '
                         f'ground truth {np.unique(gt[bad])[:8].tolist()}, prediction '
                         f'{np.unique(pred[bad])[:8].tolist()}')
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes,
                                                                                 num_classes)


def segmentation_scores(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """``iou`` and ``acc`` per class (NaN where undefined), ``miou``, ``macc``, ``oacc``."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    gt_count, pred_count = confusion.sum(1), confusion.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = confusion.sum()
    return dict(iou=iou, acc=acc, miou=np.nanmean(iou) if (union > 0).any() else np.nan,
                macc=np.nanmean(acc) if (gt_count > 0).any() else np.nan,
                oacc=tp.sum() / total if total else np.nan)


@METRICS.register_module()
class PointSegMetric(BaseMetric):
    """Point-cloud semantic segmentation metric (see the module docstring).

    Reads ``pred_label`` and ``gt_label`` (``(N,)`` per sample) from the model's predictions. Class
    names come from the dataset's ``metainfo['classes']`` (S3DIS's 13 without a dataset). Returns
    ``mIoU``, ``oAcc``, ``mAcc`` (in percent) and ``IoU.<class>`` per class, and logs a table."""

    default_prefix: Optional[str] = 'points'

    def __init__(self, ignore_index: int = 255, collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index

    @property
    def classes(self) -> Sequence[str]:
        meta = self.dataset_meta or {}
        return tuple(meta.get('classes', CLASSES))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'pred_label' not in sample or 'gt_label' not in sample:
                raise KeyError('PointSegMetric needs pred_label and gt_label in every prediction, '
                               f'got keys {sorted(sample)}')
            gt, pred = sample['gt_label'], sample['pred_label']
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            self.results.append(confusion_matrix(gt, pred, len(self.classes), self.ignore_index))

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        scores = segmentation_scores(np.sum(results, axis=0))
        metrics = dict(mIoU=100 * scores['miou'], oAcc=100 * scores['oacc'],
                       mAcc=100 * scores['macc'])
        for name, value in zip(self.classes, scores['iou']):
            metrics[f'IoU.{name}'] = 100 * value
        rows = [f'{name:>10s} {100 * v:6.2f}' for name, v in zip(self.classes, scores['iou'])]
        print_log('per-class IoU (%):\n' + '\n'.join(rows) +
                  f'\n      mIoU {metrics["mIoU"]:6.2f}   oAcc {metrics["oAcc"]:6.2f}   mAcc '
                  f'{metrics["mAcc"]:6.2f}', logger='current')
        return {k: float(v) for k, v in metrics.items()}
