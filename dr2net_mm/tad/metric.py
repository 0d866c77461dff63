"""ActivityNet detection mAP at tIoU 0.5:0.05:0.95, computed by mmaction2's own evaluation code.

For each class ``k`` that has ground truth in the evaluated videos, mmaction2's
``compute_average_precision_detection`` (the function its ``ActivityNetLocalization`` evaluator
calls per class) gives the interpolated AP at every tIoU threshold; the mAP at a threshold is the
mean over those classes (as ``ActivityNetLocalization.evaluate``), and ``mAP`` the mean over the ten
thresholds. Predictions of classes without ground truth do not count, as there.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmaction.evaluation.functional.eval_detection import compute_average_precision_detection
from mmaction.registry import METRICS
from mmengine.evaluator import BaseMetric

__all__ = ['ActivityNetDetectionMetric', 'detection_map']

TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def detection_map(ground_truth: Sequence[dict], predictions: Sequence[dict],
                  tiou_thresholds: np.ndarray = TIOU_THRESHOLDS) -> Dict[str, float]:
    """mAP per threshold and averaged (module doc). ``ground_truth``: dicts ``video-id``, ``t-start``,
    ``t-end``, ``label``; ``predictions``: the same and ``score`` (mmaction2's record layout).
    Returns ``{'mAP@<tiou>': ..., 'mAP': ...}`` for every threshold."""
    labels = sorted({g['label'] for g in ground_truth})
    ap = np.zeros((len(tiou_thresholds), max(len(labels), 1)))
    for column, label in enumerate(labels):
        gts = [dict(g) for g in ground_truth if g['label'] == label]
        preds = [dict(p) for p in predictions if p['label'] == label]
        ap[:, column] = compute_average_precision_detection(gts, preds, tiou_thresholds)
    per_threshold = ap.mean(axis=1)
    out = OrderedDict((f'mAP@{t:.2f}', float(v)) for t, v in zip(tiou_thresholds, per_threshold))
    out['mAP'] = float(per_threshold.mean())
    return out


@METRICS.register_module()
class ActivityNetDetectionMetric(BaseMetric):
    """Temporal detection mAP of ``pred_instances`` (``segments`` in seconds, ``scores``,
    ``labels``) against ``gt_instances`` (``segments`` normalised, scaled by the metainfo
    ``duration``). Reports ``mAP@0.5``, ``mAP@0.75``, ``mAP@0.95`` and ``mAP`` (the average over
    tIoU 0.5:0.05:0.95); ``all_thresholds=True`` adds the other seven."""

    default_prefix = 'tad'

    def __init__(self, all_thresholds: bool = False, collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.all_thresholds = all_thresholds

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            if not isinstance(sample, dict):
                sample = sample.to_dict()
            video, duration = sample['video_name'], float(sample['duration'])
            gt, pred = sample['gt_instances'], sample['pred_instances']
            self.results.append(dict(
                gt=[dict(video=video, start=float(s[0]) * duration, end=float(s[1]) * duration,
                         label=int(l)) for s, l in zip(gt['segments'], gt['labels'])],
                pred=[dict(video=video, start=float(s[0]), end=float(s[1]), label=int(l),
                           score=float(c)) for s, l, c in zip(pred['segments'], pred['labels'],
                                                              pred['scores'])]))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        def record(item):
            out = {'video-id': item['video'], 't-start': item['start'], 't-end': item['end'],
                   'label': item['label']}
            if 'score' in item:
                out['score'] = item['score']
            return out

        ground_truth = [record(g) for r in results for g in r['gt']]
        predictions = [record(p) for r in results for p in r['pred']]
        full = detection_map(ground_truth, predictions)
        if self.all_thresholds:
            return OrderedDict((k.replace('@0.50', '@0.5'), v) for k, v in full.items())
        return OrderedDict([('mAP@0.5', full['mAP@0.50']), ('mAP@0.75', full['mAP@0.75']),
                            ('mAP@0.95', full['mAP@0.95']), ('mAP', full['mAP'])])
