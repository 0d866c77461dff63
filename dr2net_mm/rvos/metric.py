"""Referring segmentation metrics as MTTR reports them on A2D-Sentences.

* **mAP** (``mAP``, ``mAP@0.5``, ``mAP@0.75``): pycocotools' ``COCOeval`` with ``iouType='segm'``
  over all samples: each sample (a sentence on an annotated frame) is an image whose one
  ground-truth object is the referred mask; every predicted mask of the sample, scored by its
  referred score, is a detection. ``mAP`` is COCO's AP averaged over IoU 0.5:0.05:0.95.
* **overall IoU** (``overall_IoU``): Σ intersections / Σ unions of the best-scored mask of each
  sample against the referred mask (large objects weigh more).
* **mean IoU** (``mean_IoU``): the mean over samples of that mask's IoU.

All at the video's resolution (the model upsamples its masks to ``ori_shape``).
"""
import contextlib
import io
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmaction.registry import METRICS
from mmengine.evaluator import BaseMetric
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ['ReferringSegmentationMetric', 'referring_metrics']


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def referring_metrics(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray],
                      pred_scores: Sequence[np.ndarray]) -> Dict[str, float]:
    """The metrics of the module doc. Per sample ``i``: ``gt_masks[i]`` ``(H, W)`` bool (the
    referred object), ``pred_masks[i]`` ``(N, H, W)`` bool and ``pred_scores[i]`` ``(N,)``."""
    images, annotations, detections = [], [], []
    inter = union = 0
    ious = []
    for i, (gt, masks, scores) in enumerate(zip(gt_masks, pred_masks, pred_scores)):
        gt = np.asarray(gt, bool)
        masks, scores = np.asarray(masks, bool).reshape(-1, *gt.shape), np.asarray(scores, float)
        if len(masks) != len(scores):
            raise ValueError(f'sample {i}: {len(masks)} masks for {len(scores)} scores')
        images.append(dict(id=i, height=gt.shape[0], width=gt.shape[1]))
        rle = _rle(gt)
        annotations.append(dict(id=i + 1, image_id=i, category_id=1, segmentation=rle,
                                area=float(mask_utils.area(rle)),
                                bbox=mask_utils.toBbox(rle).tolist(), iscrowd=0))
        for mask, score in zip(masks, scores):
            detections.append(dict(image_id=i, category_id=1, segmentation=_rle(mask),
                                   score=float(score)))
        best = masks[int(np.argmax(scores))] if len(scores) else np.zeros_like(gt)
        i_, u_ = np.logical_and(best, gt).sum(), np.logical_or(best, gt).sum()
        inter, union = inter + i_, union + u_
        ious.append(i_ / u_ if u_ else 1.0)
    out = OrderedDict([('mAP', 0.0), ('mAP@0.5', 0.0), ('mAP@0.75', 0.0)])
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO()
            coco.dataset = dict(images=images, annotations=annotations,
                                categories=[dict(id=1, name='referred')])
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes(detections), iouType='segm')
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out.update({'mAP': max(float(evaluator.stats[0]), 0.0),
                    'mAP@0.5': max(float(evaluator.stats[1]), 0.0),
                    'mAP@0.75': max(float(evaluator.stats[2]), 0.0)})
    out['overall_IoU'] = float(inter / union) if union else 1.0
    out['mean_IoU'] = float(np.mean(ious)) if ious else 0.0
    return out


@METRICS.register_module()
class ReferringSegmentationMetric(BaseMetric):
    """mAP@0.5:0.95, mAP@0.5, mAP@0.75, overall IoU and mean IoU (module doc) of
    ``pred_instances`` (``masks`` ``(N, H, W)`` bool, ``scores``) against ``gt_referred_mask``."""

    default_prefix = 'rvos'

    def __init__(self, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            if not isinstance(sample, dict):
                sample = sample.to_dict()
            gt = np.asarray(sample['gt_referred_mask'].cpu(), bool)
            pred = sample['pred_instances']
            masks = np.asarray(pred['masks'].cpu(), bool)
            if masks.shape[-2:] != gt.shape:
                raise ValueError(f'predicted masks of {tuple(masks.shape[-2:])} for a ground '
                                 f'truth of {gt.shape} (video {sample.get("video_id")!r}): the '
                                 'model must predict at the video\'s size (ori_shape)')
            self.results.append(dict(gt=_rle(gt), shape=gt.shape,
                                     pred=[_rle(m) for m in masks],
                                     scores=np.asarray(pred['scores'].cpu(), float)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        def decode(rle, shape):
            return mask_utils.decode(dict(rle, counts=rle['counts'].encode('ascii'))).astype(
                bool).reshape(shape)

        gts = [decode(r['gt'], r['shape']) for r in results]
        preds = [np.stack([decode(p, r['shape']) for p in r['pred']]) if r['pred'] else
                 np.zeros((0, *r['shape']), bool) for r in results]
        return referring_metrics(gts, preds, [r['scores'] for r in results])
