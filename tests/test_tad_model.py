"""Spec of the temporal action detector (dr2net_mm.tad.model, dr2net_mm.tad.head): Video Swin over the
whole clip, spatial pooling, an ActionFormer-style head. Dr²Net is mmaction2's model at (1, 0), its
reversible gradients are as precise as float32 autograd, the head assigns, decodes and learns."""
import math

import pytest
import torch

pytest.importorskip('mmaction')
import dr2net_mm  # noqa: E402,F401
import dr2net_mm.tad  # noqa: E402,F401  (registers the model and head)
from mmaction.registry import MODELS  # noqa: E402
from mmaction.structures import ActionDataSample  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from dr2net_mm.core import gradient_error  # noqa: E402
from dr2net_mm.tad.head import ActionFormerHead, iou_1d, soft_nms_1d  # noqa: E402

ARCH = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
HEAD = dict(type='ActionFormerHead', num_classes=3, in_channels=128, feat_channels=16,
            num_levels=3)


def detector(backbone_type='SwinTransformer3D', seed=0, **kwargs):
    init_default_scope('mmaction')
    torch.manual_seed(seed)
    backbone = dict(type=backbone_type, arch=ARCH, window_size=(2, 4, 4), pretrained2d=False,
                    drop_path_rate=kwargs.pop('drop_path_rate', 0.0), **kwargs.pop('backbone', {}))
    model = MODELS.build(dict(type='TemporalActionDetector', backbone=backbone, head=HEAD,
                              **kwargs))
    model.init_weights()
    return model


def clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def samples(count=2, duration=10.0):
    out = []
    for _ in range(count):
        sample = ActionDataSample(metainfo=dict(duration=duration, video_name='v'))
        sample.gt_instances = InstanceData(segments=torch.tensor([[0.1, 0.4], [0.5, 0.9]]),
                                           labels=torch.tensor([0, 2]))
        out.append(sample)
    return out


class HeadOutputs(torch.nn.Module):
    """The detector as a function of the clip alone: every head output, for gradient_error."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits, dists = self.model(x, mode='tensor')
        return [*logits, *dists]


# 1. Dr²Net at (1, 0) is the conventional model ------------------------------------------------------
def test_dr2net_detector_at_alpha1_beta0_equals_the_conventional_one():
    reference = detector().eval()
    model = detector('Dr2NetSwin3D', backbone=dict(alpha=1.0, beta=0.0, reversible=False)).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert set(missing) <= {'backbone.alpha', 'backbone.beta'} and unexpected == []
    x = clip(2, 3, 16, 32, 32)
    with torch.no_grad():
        expected_logits, expected_dists = reference(x, mode='tensor')
        logits, dists = model(x, mode='tensor')
        assert len(logits) == 3 and [t.shape[1] for t in logits] == [8, 4, 2]
        assert all(torch.equal(a, b) for a, b in zip(logits, expected_logits))
        assert all(torch.equal(a, b) for a, b in zip(dists, expected_dists))
        expected = reference(x, samples(), mode='predict')
        predicted = model(x, samples(), mode='predict')
    for a, b in zip(predicted, expected):
        assert torch.equal(a.pred_instances.segments, b.pred_instances.segments)
        assert torch.equal(a.pred_instances.scores, b.pred_instances.scores)


@pytest.mark.parametrize('alpha,beta', [(1.0, 0.1), (0.3, 0.7)])
def test_reversible_detector_gradients_as_precise_as_ordinary_autograd(alpha, beta):
    """Head included, drop path 0.2 replayed: every gradient within 2× float32 autograd's own error
    against float64, and every stage rebuilt its streams bit for bit."""
    model = detector('Dr2NetSwin3D', drop_path_rate=0.2,
                     backbone=dict(alpha=alpha, beta=beta)).train()
    report = gradient_error(HeadOutputs(model), clip(1, 3, 16, 32, 32))
    print(f'\n({alpha}, {beta}): reversible {report.reversible_vs_truth.worst:.3g}, '
          f'reference {report.reference_vs_truth.worst:.3g}')
    assert len(report.reversible_vs_truth.per_parameter) == len(list(model.parameters()))
    assert report.reversible_vs_truth.worst <= 2 * report.reference_vs_truth.worst
    assert model.backbone.reconstruction_errors() == [0.0] * 4


def test_loss_backward_reaches_every_parameter_and_predictions_are_in_seconds():
    model = detector('Dr2NetSwin3D').train()
    losses = model(clip(2, 1, 3, 16, 32, 32), samples(), mode='loss')
    assert set(losses) == {'loss_cls', 'loss_reg'}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.backbone.reconstruction_errors() == [0.0] * 4
    model.eval()
    out = model(clip(2, 1, 3, 16, 32, 32), samples(duration=20.0), mode='predict')
    pred = out[0].pred_instances
    assert pred.segments.shape[1] == 2 and len(pred.scores) == len(pred.labels) > 0
    assert pred.segments.min() >= 0 and pred.segments.max() <= 20.0
    assert (pred.scores[:-1] >= pred.scores[1:]).all()  # best first


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval_mode():
    model = detector(freeze_backbone=True).train()
    assert not model.backbone.training and model.head.training
    losses = model(clip(2, 3, 16, 32, 32), samples(), mode='loss')
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_several_clips_per_video_are_refused_with_the_shape():
    model = detector().eval()
    with pytest.raises(ValueError, match=r'one clip per video.*\(1, 2, 3, 16, 32, 32\)'):
        model(clip(1, 2, 3, 16, 32, 32), mode='tensor')


# 2. The head ------------------------------------------------------------------------------------------
def test_iou_1d_and_soft_nms_have_the_known_values():
    assert iou_1d(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(0.5)
    assert iou_1d(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])).item() == 0.0
    segments = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 0.5], [2.0, 3.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    kept, decayed = soft_nms_1d(segments, scores, sigma=0.5, min_score=1e-3)
    # after the best: the duplicate decays by exp(-1²/0.5), the half-overlapping one by
    # exp(-0.5²/0.5), the disjoint one not at all; the duplicate once more by exp(-0.5²/0.5) when the
    # half one (IoU 0.5 with it) is kept; best first
    expected = [0.9, 0.6, 0.7 * math.exp(-0.5), 0.8 * math.exp(-2) * math.exp(-0.5)]
    assert decayed.tolist() == pytest.approx(expected)
    assert kept[0].tolist() == [0.0, 1.0] and kept[1].tolist() == [2.0, 3.0]
    assert soft_nms_1d(segments, scores, max_num=2)[1].numel() == 2


def test_targets_take_centre_points_of_the_level_whose_range_fits_the_segment():
    """Features of length 16, segment [0.25, 0.75] = steps [4, 12]. Level 0 (range [0, 4)): its
    centre points 6.5-9.5 reach 5.5 steps or more, too far. Level 1 (stride 2, range [4, 8)): centre
    region 8 ± 3 holds points 5, 7, 9, 11, reaching 7, 5, 5, 7 steps: the positives. Level 2 (stride
    4, range [8, inf)): points 6 and 10 reach only 6."""
    head = ActionFormerHead(num_classes=2, in_channels=4, feat_channels=8, num_levels=3)
    assert head.regress_ranges == [(0, 4), (4, 8), (8, math.inf)]
    pts = head.points([16, 8, 4], 16)
    cls, dist = head.targets(pts, torch.tensor([[0.25, 0.75]]), torch.tensor([1]), 16)
    positive = cls.sum(1) > 0
    assert (pts[positive, 0] * 16).tolist() == [5.0, 7.0, 9.0, 11.0]
    assert pts[positive, 4].tolist() == [1.0] * 4  # all on level 1
    assert cls[positive, 1].eq(1).all() and cls[positive, 0].eq(0).all()
    # distances to start and end in units of the level stride (2 steps)
    assert dist[positive].flatten().tolist() == pytest.approx([0.5, 3.5, 1.5, 2.5, 2.5, 1.5,
                                                               3.5, 0.5])
    assert dist[~positive].abs().sum() == 0
    empty_cls, empty_dist = head.targets(pts, torch.zeros((0, 2)), torch.zeros(0, dtype=torch.long),
                                         16)
    assert empty_cls.sum() == 0 and empty_dist.sum() == 0


def test_decoding_turns_a_confident_point_into_its_segment():
    head = ActionFormerHead(num_classes=2, in_channels=4, feat_channels=8, num_levels=2).eval()
    logits = [torch.full((1, 8, 2), -20.0), torch.full((1, 4, 2), -20.0)]
    dists = [torch.zeros(1, 8, 2), torch.zeros(1, 4, 2)]
    logits[1][0, 2, 1] = 5.0  # level 1 (stride 2/8), point 2 at t = 2.5·2/8 = 0.625
    dists[1][0, 2] = torch.tensor([1.0, 0.5])  # [0.625 - 0.25, 0.625 + 0.125]
    head.forward = lambda feats: (logits, dists)
    (result, ) = head.predict(torch.zeros(1, 4, 8))
    assert result['labels'].tolist() == [1]
    assert result['segments'].tolist() == [[0.375, 0.75]]
    assert result['scores'].tolist() == pytest.approx([torch.sigmoid(torch.tensor(5.0)).item()])


def test_head_alone_learns_to_find_a_segment_on_one_dimensional_features():
    """Features that are 1 inside [0.3, 0.6] and 0 outside: 150 Adam steps fit class and bounds."""
    torch.manual_seed(0)
    head = ActionFormerHead(num_classes=2, in_channels=1, feat_channels=16, num_levels=3)
    feats = torch.zeros(1, 1, 32)
    feats[..., int(0.3 * 32):int(0.6 * 32)] = 1.0
    gt = [(torch.tensor([[0.3, 0.6]]), torch.tensor([1]))]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        losses = head.loss(feats, gt)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    head.eval()
    (result, ) = head.predict(feats)
    assert result['labels'][0].item() == 1
    best = result['segments'][0]
    inter = (torch.minimum(best[1], torch.tensor(0.6)) - torch.maximum(best[0], torch.tensor(0.3)))
    assert inter / (best[1] - best[0] + 0.3 - inter) > 0.7


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_levels=0), 'num_levels=0 must be >= 1'),
    (dict(num_levels=2, regress_ranges=[(0, 4)]), 'regress_ranges has 1 entries for num_levels=2'),
    (dict(test_cfg=dict(nms_thr=0.5)), r"test_cfg has unknown keys \['nms_thr'\]"),
])
def test_bad_head_arguments_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionFormerHead(num_classes=2, in_channels=4, **kwargs)
