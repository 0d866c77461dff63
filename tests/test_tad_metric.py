"""Spec of the TAD metric (dr2net_mm.tad.metric): ActivityNet detection mAP at tIoU 0.5:0.05:0.95
through mmaction2's own per-class AP function, on hand-made cases with known answers."""
import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
import dr2net_mm.tad  # noqa: E402,F401
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from dr2net_mm.tad.metric import ActivityNetDetectionMetric, detection_map  # noqa: E402


def gt(video, start, end, label=0):
    return {'video-id': video, 't-start': start, 't-end': end, 'label': label}


def pred(video, start, end, score, label=0):
    return dict(gt(video, start, end, label), score=score)


def test_perfect_predictions_score_one_at_every_threshold():
    truth = [gt('a', 0, 10), gt('a', 20, 30, 1), gt('b', 5, 6)]
    result = detection_map(truth, [dict(g, score=0.9) for g in truth])
    assert result['mAP'] == 1.0 and all(v == 1.0 for v in result.values())
    assert len(result) == 11  # ten thresholds and the mean


def test_a_half_overlapping_prediction_counts_at_tiou_half_only():
    """[0, 5] against [0, 10]: tIoU 0.5, a hit at 0.5 only, so the average is 1/10."""
    result = detection_map([gt('a', 0, 10)], [pred('a', 0, 5, 0.9)])
    assert result['mAP@0.50'] == 1.0 and result['mAP@0.55'] == 0.0
    assert result['mAP'] == pytest.approx(0.1)


def test_a_prediction_of_tiou_077_hits_the_first_six_thresholds():
    result = detection_map([gt('a', 0, 10)], [pred('a', 0, 7.7, 0.9)])
    assert [result[f'mAP@{t:.2f}'] for t in (0.5, 0.75, 0.8)] == [1.0, 1.0, 0.0]
    assert result['mAP'] == pytest.approx(0.6)


def test_a_false_positive_ranked_first_halves_the_ap_and_a_duplicate_adds_nothing():
    """Ranked FP then TP: precision 0 then 1/2 at recall 1, interpolated AP 0.5. A duplicate of the
    true positive, ranked after it, is a false positive at full recall: the AP stays 1."""
    truth = [gt('a', 0, 10)]
    assert detection_map(truth, [pred('a', 50, 60, 0.9), pred('a', 0, 10, 0.8)])['mAP'] == 0.5
    assert detection_map(truth, [pred('a', 0, 10, 0.9), pred('a', 0, 10, 0.8)])['mAP'] == 1.0
    # in another video, or of the wrong class, it is no hit
    assert detection_map(truth, [pred('b', 0, 10, 0.9)])['mAP'] == 0.0
    assert detection_map(truth + [gt('b', 0, 1, 1)], [pred('a', 0, 10, 0.9, label=1)])['mAP'] == 0


def test_the_map_is_the_mean_over_classes_with_ground_truth():
    truth = [gt('a', 0, 10, 0), gt('a', 20, 30, 1)]
    result = detection_map(truth, [pred('a', 0, 10, 0.9, 0), pred('a', 40, 50, 0.8, 1),
                                   pred('a', 0, 10, 0.9, 2)])  # class 2 has no ground truth
    assert result['mAP'] == 0.5


def test_the_mmengine_metric_reads_samples_scales_by_duration_and_reports_four_numbers():
    metric = ActivityNetDetectionMetric()
    metric.dataset_meta = dict(classes=('x', 'y'))
    samples = []
    for name, pred_segments in (('a', [[0.0, 10.0], [20.0, 40.0]]), ('b', [[50.0, 60.0]])):
        sample = ActionDataSample(metainfo=dict(video_name=name, duration=100.0))
        sample.gt_instances = InstanceData(segments=torch.tensor([[0.0, 0.1], [0.2, 0.3]]),
                                           labels=torch.tensor([0, 1]))
        sample.pred_instances = InstanceData(segments=torch.tensor(pred_segments),
                                             scores=torch.linspace(0.9, 0.5, len(pred_segments)),
                                             labels=torch.zeros(len(pred_segments),
                                                                dtype=torch.long))
        samples.append(sample)
    metric.process({}, [s.to_dict() for s in samples])
    result = metric.evaluate(2)
    # class 0: ground truth [0, 10] in a and b; hits a's [0, 10] (score .9), b's [50, 60] misses
    # (.5) and a's [20, 40] misses (.5): precision 1 at recall 1/2, AP 0.5. Class 1: no prediction.
    assert result == {'tad/mAP@0.5': 0.25, 'tad/mAP@0.75': 0.25, 'tad/mAP@0.95': 0.25,
                      'tad/mAP': 0.25}
    metric = ActivityNetDetectionMetric(all_thresholds=True)
    metric.process({}, [samples[0].to_dict()])
    assert len(metric.evaluate(1)) == 11
