"""An ActionFormer-style anchor-free temporal detection head (Zhang et al., ECCV 2022) on 1D features.

Why this design and not VSGN (the paper's head): VSGN's cross-scale graph and self-stitching add much
code around the same idea -- a temporal feature pyramid whose every location classifies and regresses
its distances to the action's start and end. ActionFormer's head is that idea without the graph
layers, is the common baseline of end-to-end TAD (OpenTAD, Re²TAL's successors), and its parts are
the ones the paper's head uses: a 1D pyramid, per-level classification with a sigmoid focal loss,
start/end regression with an IoU loss, soft-NMS. The backbone memory (what Dr²Net changes) does not
depend on the head.

Time is normalised: a video is ``[0, 1]``. For backbone features of length ``T'`` and pyramid level
``l`` (stride ``2^l`` steps), point ``i`` sits at ``t_i = (i + 0.5)·2^l / T'`` and has the
normalised stride ``s_l = 2^l / T'``. Each point predicts class logits ``z ∈ R^K`` and distances
``(d_s, d_e) ≥ 0`` in units of ``s_l``; its segment is ``[t - d_s·s_l, t + d_e·s_l]``.

Targets (:meth:`ActionFormerHead.targets`): ground-truth segment ``[a, b]`` is a positive of point
``t`` on level ``l`` when (1) ``t`` lies in the centre region ``[c - r·s_l, c + r·s_l] ∩ [a, b]``
(``c = (a + b)/2``, ``r = center_sample_radius``) and (2) ``max(t - a, b - t)·T'`` lies in the
level's regression range ``[lo_l, hi_l)`` (default ``lo_0 = 0``, ``lo_l = 2^(l+1)``,
``hi_l = 2^(l+2)``, the last level unbounded); of several, the shortest wins. Losses, normalised by
the number of positive points ``N+``::

    loss_cls = Σ_points Σ_k focal(z_k, y_k) / N+          (sigmoid focal loss, α = 0.25, γ = 2)
    loss_reg = Σ_positives (1 - IoU_1d(pred, target)) / N+,
    IoU_1d = I / (d_s + d_e + d_s* + d_e* - I),   I = min(d_s, d_s*) + min(d_e, d_e*)

Decoding (:meth:`ActionFormerHead.predict`): scores ``sigmoid(z)``; candidates above
``score_thr``, the ``pre_nms_topk`` best per video; Gaussian soft-NMS per class
(:func:`soft_nms_1d`); the ``max_per_video`` best.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

__all__ = ['ActionFormerHead', 'soft_nms_1d', 'iou_1d']


def iou_1d(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of segments given as distances ``(d_s, d_e)`` from the same point, ``(..., 2)`` each."""
    inter = torch.minimum(pred, target).sum(-1)
    union = pred.sum(-1) + target.sum(-1) - inter
    return inter / union.clamp_min(1e-8)


def soft_nms_1d(segments: Tensor, scores: Tensor, sigma: float = 0.5, min_score: float = 1e-3,
                max_num: int = 100) -> Tuple[Tensor, Tensor]:
    """Gaussian soft-NMS on 1D segments ``(N, 2)``: repeatedly keep the best, decay the others by
    ``exp(-IoU²/σ)`` and drop those under ``min_score``. Returns the kept segments and their decayed
    scores, best first, at most ``max_num``."""
    segments, scores = segments.clone(), scores.clone()
    kept_segments, kept_scores = [], []
    while scores.numel() and len(kept_scores) < max_num:
        best = int(scores.argmax())
        top = segments[best]
        kept_segments.append(top)
        kept_scores.append(scores[best])
        rest = torch.ones_like(scores, dtype=torch.bool)
        rest[best] = False
        segments, scores = segments[rest], scores[rest]
        inter = (torch.minimum(segments[:, 1], top[1]) - torch.maximum(segments[:, 0], top[0]))
        inter = inter.clamp_min(0)
        union = (segments[:, 1] - segments[:, 0]) + (top[1] - top[0]) - inter
        iou = inter / union.clamp_min(1e-8)
        scores = scores * torch.exp(-iou.pow(2) / sigma)
        keep = scores >= min_score
        segments, scores = segments[keep], scores[keep]
    if not kept_scores:
        return segments.new_zeros((0, 2)), scores.new_zeros((0, ))
    return torch.stack(kept_segments), torch.stack(kept_scores)


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    groups = math.gcd(out_channels, 16)
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, 3, stride, 1),
                         nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True))


class ActionFormerHead(BaseModule):
    """A 1D feature pyramid and shared per-level classification / regression branches (module doc).

    Args:
        num_classes: K action classes (sigmoid outputs, no background class).
        in_channels: channels of the backbone's temporal features ``(B, C, T')``.
        feat_channels: width of the pyramid and of the branches.
        num_levels: pyramid levels (level ``l`` has stride ``2^l`` over ``T'``).
        regress_ranges: per level ``(lo, hi)`` in feature steps of ``T'``; None: the default.
        center_sample_radius: ``r`` of the centre region, in level strides.
        prior_prob: initial foreground probability of the classifier (bias ``-log((1-p)/p)``).
        focal_alpha, focal_gamma: the sigmoid focal loss's α, γ.
        loss_reg_weight: weight of the IoU loss.
        test_cfg: ``score_thr``, ``pre_nms_topk``, ``nms_sigma``, ``min_score``, ``max_per_video``.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 num_levels: int = 6, regress_ranges: Optional[Sequence[Sequence[float]]] = None,
                 center_sample_radius: float = 1.5, prior_prob: float = 0.01,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, loss_reg_weight: float = 1.0,
                 test_cfg: Optional[dict] = None, init_cfg=None):
        super().__init__(init_cfg)
        if num_classes < 1 or num_levels < 1:
            raise ValueError(f'num_classes={num_classes} and num_levels={num_levels} must be >= 1')
        if regress_ranges is None:
            regress_ranges = [(0 if l == 0 else 2**(l + 1), 2**(l + 2)) for l in range(num_levels)]
            regress_ranges[-1] = (regress_ranges[-1][0], math.inf)
        if len(regress_ranges) != num_levels:
            raise ValueError(f'regress_ranges has {len(regress_ranges)} entries for num_levels='
                             f'{num_levels}: give one (lo, hi) per level')
        self.num_classes, self.num_levels = num_classes, num_levels
        self.regress_ranges = [tuple(float(v) for v in r) for r in regress_ranges]
        self.center_sample_radius = center_sample_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.loss_reg_weight = loss_reg_weight
        self.test_cfg = dict(score_thr=1e-3, pre_nms_topk=2000, nms_sigma=0.5, min_score=1e-3,
                             max_per_video=100)
        unknown = set(test_cfg or {}) - set(self.test_cfg)
        if unknown:
            raise ValueError(f'test_cfg has unknown keys {sorted(unknown)}; known: '
                             f'{sorted(self.test_cfg)}')
        self.test_cfg.update(test_cfg or {})
        self.input_proj = nn.Sequential(_conv_block(in_channels, feat_channels),
                                        _conv_block(feat_channels, feat_channels))
        self.downsample = nn.ModuleList(
            _conv_block(feat_channels, feat_channels, stride=2) for _ in range(num_levels - 1))
        self.cls_branch = nn.Sequential(_conv_block(feat_channels, feat_channels),
                                        nn.Conv1d(feat_channels, num_classes, 3, 1, 1))
        self.reg_branch = nn.Sequential(_conv_block(feat_channels, feat_channels),
                                        nn.Conv1d(feat_channels, 2, 3, 1, 1))
        self.scales = nn.Parameter(torch.ones(num_levels))  # per-level regression scale
        nn.init.constant_(self.cls_branch[-1].bias, -math.log((1 - prior_prob) / prior_prob))

    # ------------------------------------------------------------------------------ forward
    def forward(self, feats: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """``(B, C, T')`` -> per level: class logits ``(B, T_l, K)`` and distances ``(B, T_l, 2)``
        (≥ 0, in units of the level's stride)."""
        x = self.input_proj(feats)
        levels = [x]
        for down in self.downsample:
            levels.append(down(levels[-1]))
        logits = [self.cls_branch(x).transpose(1, 2) for x in levels]
        dists = [F.relu(self.reg_branch(x) * self.scales[l]).transpose(1, 2)
                 for l, x in enumerate(levels)]
        return logits, dists

    def points(self, lengths: Sequence[int], base_length: int, device=None) -> Tensor:
        """All pyramid points as rows ``(t, s_l, lo_l, hi_l, level)`` in normalised time, for level
        lengths ``lengths`` over backbone features of length ``base_length``."""
        rows = []
        for level, length in enumerate(lengths):
            stride = 2**level
            t = (torch.arange(length, dtype=torch.float32, device=device) + 0.5) * stride
            lo, hi = self.regress_ranges[level]
            info = torch.tensor([stride, lo, hi, level], dtype=torch.float32, device=device)
            rows.append(torch.cat([t[:, None], info.expand(length, 4).clone()], 1))
        pts = torch.cat(rows)
        pts[:, :2] /= base_length  # t and s_l in normalised time; lo, hi stay in feature steps
        return pts

    # ------------------------------------------------------------------------------ targets
    def targets(self, pts: Tensor, segments: Tensor, labels: Tensor,
                base_length: int) -> Tuple[Tensor, Tensor]:
        """One video's targets: one-hot classes ``(P, K)`` (all zero: background) and distances
        ``(P, 2)`` in units of each point's stride, for ground truth ``segments`` ``(N, 2)``
        (normalised) with ``labels`` ``(N, )``."""
        num_points = pts.shape[0]
        cls_target = pts.new_zeros((num_points, self.num_classes))
        if segments.numel() == 0:
            return cls_target, pts.new_zeros((num_points, 2))
        t, stride, lo, hi = (pts[:, i:i + 1] for i in range(4))
        start, end = segments[None, :, 0], segments[None, :, 1]
        left, right = t - start, end - t  # (P, N)
        centre = (start + end) / 2
        radius = self.center_sample_radius * stride
        in_centre = (t >= torch.maximum(centre - radius, start)) & \
            (t <= torch.minimum(centre + radius, end))
        reach = torch.maximum(left, right) * base_length
        in_range = (reach >= lo) & (reach < hi)
        lengths = (end - start).expand(num_points, -1).clone()
        lengths[~(in_centre & in_range)] = math.inf
        shortest, index = lengths.min(1)
        positive = torch.isfinite(shortest)
        cls_target[positive, labels[index[positive]]] = 1.0
        dist = torch.stack([left.gather(1, index[:, None])[:, 0],
                            right.gather(1, index[:, None])[:, 0]], 1) / stride
        dist[~positive] = 0
        return cls_target, dist

    def loss(self, feats: Tensor, batch_gt: Sequence[Tuple[Tensor, Tensor]]) -> Dict[str, Tensor]:
        """Focal and IoU losses (module doc) for ``(segments, labels)`` of each video."""
        logits, dists = self(feats)
        pts = self.points([x.shape[1] for x in logits], feats.shape[-1], feats.device)
        logits, dists = torch.cat(logits, 1), torch.cat(dists, 1)  # (B, P, K), (B, P, 2)
        targets = [self.targets(pts, seg.to(feats.device).float(), lab.to(feats.device).long(),
                                feats.shape[-1]) for seg, lab in batch_gt]
        cls_target = torch.stack([c for c, _ in targets])
        dist_target = torch.stack([d for _, d in targets])
        positive = cls_target.sum(-1) > 0
        num_pos = max(int(positive.sum()), 1)
        loss_cls = sigmoid_focal_loss(logits, cls_target, self.focal_alpha, self.focal_gamma,
                                      reduction='sum') / num_pos
        ious = iou_1d(dists[positive], dist_target[positive])
        loss_reg = (1 - ious).sum() / num_pos * self.loss_reg_weight
        return dict(loss_cls=loss_cls, loss_reg=loss_reg)

    # ------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def predict(self, feats: Tensor) -> List[Dict[str, Tensor]]:
        """Per video: ``segments`` ``(M, 2)`` in normalised time, ``scores`` ``(M, )``, ``labels``
        ``(M, )`` after soft-NMS (module doc)."""
        cfg = self.test_cfg
        logits, dists = self(feats)
        pts = self.points([x.shape[1] for x in logits], feats.shape[-1], feats.device)
        scores_all = torch.cat(logits, 1).sigmoid()
        dists_all = torch.cat(dists, 1)
        results = []
        for scores, dist in zip(scores_all, dists_all):
            flat = scores.flatten()
            candidates = (flat > cfg['score_thr']).nonzero()[:, 0]
            candidates = candidates[flat[candidates].argsort(descending=True)]
            candidates = candidates[:cfg['pre_nms_topk']]
            point, label = candidates // self.num_classes, candidates % self.num_classes
            t, stride = pts[point, 0], pts[point, 1]
            segments = torch.stack([t - dist[point, 0] * stride, t + dist[point, 1] * stride], 1)
            segments = segments.clamp(0, 1)
            valid = segments[:, 1] > segments[:, 0]
            segments, label, score = segments[valid], label[valid], flat[candidates][valid]
            out_seg, out_score, out_label = [], [], []
            for k in label.unique():
                of_k = label == k
                seg_k, score_k = soft_nms_1d(segments[of_k], score[of_k], cfg['nms_sigma'],
                                             cfg['min_score'], cfg['max_per_video'])
                out_seg.append(seg_k)
                out_score.append(score_k)
                out_label.append(torch.full_like(score_k, int(k), dtype=torch.long))
            if out_score:
                seg, score, lab = torch.cat(out_seg), torch.cat(out_score), torch.cat(out_label)
                order = score.argsort(descending=True)[:cfg['max_per_video']]
                seg, score, lab = seg[order], score[order], lab[order]
            else:
                seg, score = feats.new_zeros((0, 2)), feats.new_zeros((0, ))
                lab = torch.zeros(0, dtype=torch.long, device=feats.device)
            results.append(dict(segments=seg, scores=score, labels=lab))
        return results
