"""Referring segmentation metrics (dr2net_mm.rvos.metric) on hand-made cases with known values:
pycocotools' segm mAP, overall IoU (pixel sums) and mean IoU (per sample)."""
import numpy as np
import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from dr2net_mm.rvos.metric import ReferringSegmentationMetric, referring_metrics  # noqa: E402


def box(y0, y1, x0, x1, shape=(16, 16)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_a_perfect_answer_scores_one_everywhere():
    gt = box(2, 6, 2, 6)
    out = referring_metrics([gt], [gt[None]], [np.array([0.9])])
    assert out == pytest.approx({'mAP': 1.0, 'mAP@0.5': 1.0, 'mAP@0.75': 1.0, 'overall_IoU': 1.0,
                                 'mean_IoU': 1.0})


def test_half_overlap_counts_at_iou_0_5_only():
    """The prediction covers the 16-pixel object and 16 pixels beside it: IoU 0.5, a match at the
    first of the ten thresholds only, so mAP 0.1."""
    gt, pred = box(2, 6, 2, 6), box(2, 6, 2, 10)
    out = referring_metrics([gt], [pred[None]], [np.array([0.7])])
    assert out['mAP@0.5'] == pytest.approx(1.0) and out['mAP@0.75'] == 0.0
    assert out['mAP'] == pytest.approx(0.1)
    assert out['overall_IoU'] == pytest.approx(0.5) and out['mean_IoU'] == pytest.approx(0.5)


def test_overall_iou_weighs_large_objects_and_mean_iou_weighs_samples():
    """A 16-pixel object found exactly, a 48-pixel one answered with an empty mask: overall
    IoU 16 / 64, mean IoU (1 + 0) / 2."""
    small, large = box(0, 4, 0, 4), box(8, 14, 8, 16)
    out = referring_metrics([small, large], [small[None], np.zeros((1, 16, 16), bool)],
                            [np.array([0.9]), np.array([0.9])])
    assert out['overall_IoU'] == pytest.approx(0.25) and out['mean_IoU'] == pytest.approx(0.5)
    # one of the two objects found at every threshold: precision 1 up to recall 0.5, i.e. on 51 of
    # COCO's 101 recall points
    assert out['mAP'] == pytest.approx(51 / 101)


def test_a_false_positive_ranked_first_halves_the_ap_and_takes_the_iou():
    """Two detections on one sample: a wrong mask scored 0.9, the right one 0.8. AP: precision 1/2
    at recall 1 (COCO's interpolation), at every threshold. IoU: the best-scored mask, the wrong
    one: 0."""
    gt = box(2, 6, 2, 6)
    out = referring_metrics([gt], [np.stack([box(10, 14, 10, 14), gt])], [np.array([0.9, 0.8])])
    assert out['mAP'] == pytest.approx(0.5) and out['mAP@0.5'] == pytest.approx(0.5)
    assert out['overall_IoU'] == 0.0 and out['mean_IoU'] == 0.0


def test_metric_reads_the_data_samples_and_refuses_masks_of_another_size():
    gt, pred = box(2, 6, 2, 6), box(2, 6, 2, 10)
    metric = ReferringSegmentationMetric()
    samples = []
    for masks in (np.stack([gt, pred]), pred[None]):
        sample = ActionDataSample(metainfo=dict(video_id='v'))
        sample.set_data(dict(gt_referred_mask=torch.from_numpy(gt)))
        sample.pred_instances = InstanceData(masks=torch.from_numpy(masks),
                                             scores=torch.linspace(0.9, 0.5, len(masks)))
        samples.append(sample)
    metric.process({}, samples)
    out = metric.compute_metrics(metric.results)
    expected = referring_metrics([gt, gt], [np.stack([gt, pred]), pred[None]],
                                 [np.array([0.9, 0.5]), np.array([0.9])])
    assert out == pytest.approx(expected)
    assert out['overall_IoU'] == pytest.approx(2 / 3)  # (16 + 16) / (16 + 32)
    sample = samples[0]
    sample.pred_instances = InstanceData(masks=torch.zeros(1, 8, 8, dtype=torch.bool),
                                         scores=torch.ones(1))
    with pytest.raises(ValueError, match=r"predicted masks of \(8, 8\) for a ground truth of "
                       r"\(16, 16\) \(video 'v'\)"):
        metric.process({}, [sample])
