"""Pix4Point-style point-cloud segmentation with a (Dr²Net) ViT: tokenizer, backbone, decoder, head.

``Pix4PointSegmentor`` (an MMEngine ``BaseModel`` in the root ``MODELS`` registry), for a crop of
``N`` points with coordinates ``xyz (B, N, 3)`` and features ``f (B, N, C)``:

1. ``xyz`` is centred per crop (x, y minus their mean, z minus its minimum), see :meth:`centre`;
2. :class:`PointTokenizer`: ``M`` centres by farthest point sampling, the ``k`` nearest points of
   each, a shared MLP on ``[p_j - c, f_j]`` with max pooling -> tokens ``(B, M, D)``;
3. position embedding ``E(c) = MLP(c)`` of the centres, ``(B, M, D)``;
4. the backbone's ``forward_tokens(tokens, E, out_indices)``: ``Dr2NetViT`` (reversible, Dr²Net) or
   ``PlainViT`` (the conventional baseline), ViT-S with MAE/timm weights; the outputs of the blocks
   ``out_indices`` (all come out of the same reversible stage, so several cost no kept activations)
   are layer-normalised, concatenated and projected: token features ``T (B, M, D')``;
5. feature propagation: ``T`` interpolated to every point by inverse-distance weights over its 3
   nearest centres (:func:`~dr2net_mm.points.ops.inverse_distance_interpolate`), concatenated with
   the max-pooled global token feature and a per-point skip feature ``MLP([xyz, f])``;
6. a per-point MLP classifier -> logits ``(B, N, num_classes)``; cross-entropy with ``ignore_index``.

This follows Pix4Point (Qian et al., 3DV 2024) with a simpler tokenizer (one grouping level, not its
progressive embedding) and decoder (one propagation step), and the position embedding added once
before the blocks (Pix4Point adds it before every block).

Full-room evaluation (``predict`` on samples from ``PointVoteSubsets``): for every vote subset (one
random point per voxel), crops of ``test_cfg['crop_points']`` points cover the subset (the nearest
points of the first not yet covered point, until all are covered), the class probabilities of a
subset point are averaged over the crops holding it, every original point takes those of its voxel's
representative, and the votes are summed. The predicted label is the argmax, for every point of the
room.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from ..checks import check_int
from .ops import farthest_point_sample, gather_points, inverse_distance_interpolate, knn

__all__ = ['PointTokenizer', 'Pix4PointSegmentor']


def _mlp(*dims: int) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU between consecutive ``dims``; the last layer is a plain Linear."""
    layers: List[nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.LayerNorm(dims[i + 1]), nn.GELU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class PointTokenizer(nn.Module):
    """Points -> ``num_tokens`` tokens (a mini-PointNet per local group, as Point-BERT/Pix4Point).

    ``c_m = xyz[FPS(xyz, M)[m]]`` (start index 0); ``G_m`` = the ``group_size`` nearest points of
    ``c_m``; per neighbour ``h_j = MLP_1([p_j - c_m, f_j])`` (hidden ``H``), ``g = max_j h_j``, then
    ``token_m = max_j MLP_2([h_j, g])`` of width ``embed_dims``.

    Shapes: ``xyz (B, N, 3)``, ``feats (B, N, C)`` -> ``centres (B, M, 3)``, ``tokens (B, M, D)``.
    Needs ``N >= num_tokens`` and ``N >= group_size``.
    """

    def __init__(self, in_channels: int, embed_dims: int, num_tokens: int, group_size: int = 32,
                 hidden_dims: int = 128):
        super().__init__()
        self.in_channels = check_int('in_channels', in_channels, 0)
        self.num_tokens = check_int('num_tokens', num_tokens)
        self.group_size = check_int('group_size', group_size)
        hidden = check_int('hidden_dims', hidden_dims)
        self.first = _mlp(3 + in_channels, hidden, hidden)
        self.second = _mlp(2 * hidden, 2 * hidden, embed_dims)

    def forward(self, xyz: Tensor, feats: Tensor) -> Tuple[Tensor, Tensor]:
        n = xyz.shape[1]
        if n < max(self.num_tokens, self.group_size):
            raise ValueError(f'a sample has {n} points, fewer than the tokenizer needs (num_tokens='
                             f'{self.num_tokens}, group_size={self.group_size}); give at least '
                             f'{max(self.num_tokens, self.group_size)} points per sample '
                             '(PointRandomCrop num_points, test_cfg crop_points) or lower num_tokens')
        centres = gather_points(xyz, farthest_point_sample(xyz, self.num_tokens))  # (B, M, 3)
        _, idx = knn(centres, xyz, self.group_size)  # (B, M, k)
        grouped = torch.cat([gather_points(xyz, idx) - centres[:, :, None],
                             gather_points(feats, idx)], -1)  # (B, M, k, 3 + C)
        h = self.first(grouped)  # (B, M, k, H)
        g = h.max(2, keepdim=True).values.expand_as(h)
        return centres, self.second(torch.cat([h, g], -1)).max(2).values  # (B, M, D)


@MODELS.register_module()
class Pix4PointSegmentor(BaseModel):
    """Per-point semantic segmentation of point crops with a ViT backbone (see the module docstring).

    Args:
        backbone: config of a module with ``embed_dims`` and ``forward_tokens(tokens, pos_embed,
            out_indices, prefix_tokens=...)``: ``dict(type='Dr2NetViT', arch='vit_small_patch16_224',
            init_cfg=dict(type='Pretrained', checkpoint=...))`` or ``type='PlainViT'``.
        num_classes: 13 for S3DIS.
        in_channels: per-point feature channels after ``x y z`` (4: r g b /255 and height).
        num_tokens, group_size, tokenizer_dims: :class:`PointTokenizer` (``M``, ``k``, ``H``).
        out_indices: backbone blocks whose outputs feed the decoder.
        prefix_tokens: run the backbone's class (and register) tokens with the point tokens.
        decoder_dims, skip_dims, head_dims, dropout: widths of the fused token features, the per-point
            skip features, the classifier's hidden layer; dropout before the last layer.
        interp_k: sources per point in the feature propagation (PointNet++: 3).
        ignore_index, label_smoothing: of the cross-entropy loss.
        test_cfg: ``dict(crop_points=None or int, crop_batch=int)``: crop size for whole subsets in
            ``predict`` (None: the whole subset at once) and how many crops run together.

    Inputs: ``inputs`` a ``(B, N, 3 + in_channels)`` tensor or a list of ``(N_i, 3 + in_channels)``
    tensors (columns x y z, then the features); ``data_samples`` ``BaseDataElement`` s with
    ``gt_label (N_i,)`` (and ``voxel_inverse``, ``vote_indices`` for full rooms). Modes: ``'loss'`` ->
    ``dict(loss_seg, acc_seg)``; ``'predict'`` -> data samples with ``pred_label`` and ``gt_label`` for
    every input point; ``'tensor'`` -> logits ``(B, N, num_classes)``.
    """

    def __init__(self,
                 backbone: dict,
                 num_classes: int = 13,
                 in_channels: int = 4,
                 num_tokens: int = 1024,
                 group_size: int = 32,
                 tokenizer_dims: int = 128,
                 out_indices: Sequence[int] = (3, 7, 11),
                 prefix_tokens: bool = True,
                 decoder_dims: int = 256,
                 skip_dims: int = 64,
                 head_dims: int = 256,
                 dropout: float = 0.0,
                 interp_k: int = 3,
                 ignore_index: int = 255,
                 label_smoothing: float = 0.0,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        if not callable(getattr(self.backbone, 'forward_tokens', None)):
            raise TypeError(f'backbone {type(self.backbone).__name__} has no forward_tokens(tokens, '
                            "pos_embed, out_indices); use type='Dr2NetViT' or type='PlainViT'")
        dims = self.backbone.embed_dims
        self.num_classes = check_int('num_classes', num_classes, 2)
        self.in_channels = check_int('in_channels', in_channels, 0)
        self.out_indices = tuple(out_indices)
        self.prefix_tokens = bool(prefix_tokens)
        self.interp_k = check_int('interp_k', interp_k)
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.tokenizer = PointTokenizer(in_channels, dims, num_tokens, group_size, tokenizer_dims)
        self.centre_embed = _mlp(3, 128, dims)
        self.out_norms = nn.ModuleList(nn.LayerNorm(dims) for _ in self.out_indices)
        self.fuse = nn.Linear(dims * len(self.out_indices), decoder_dims)
        self.skip = _mlp(3 + in_channels, skip_dims, skip_dims)
        self.head = nn.Sequential(nn.Linear(2 * decoder_dims + skip_dims, head_dims),
                                  nn.LayerNorm(head_dims), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(head_dims, num_classes))
        self.test_cfg = dict(crop_points=None, crop_batch=1)
        self.test_cfg.update(test_cfg or {})
        unknown = sorted(set(self.test_cfg) - {'crop_points', 'crop_batch'})
        if unknown:
            raise ValueError(f'test_cfg has unknown keys {unknown}; it takes crop_points, crop_batch')
        crop = self.test_cfg['crop_points']
        if crop is not None and check_int('test_cfg crop_points', crop) < num_tokens:
            raise ValueError(f'test_cfg crop_points={crop} must be >= num_tokens={num_tokens}')
        check_int('test_cfg crop_batch', self.test_cfg['crop_batch'])
        self._freeze_unused_backbone_parameters()

    def _freeze_unused_backbone_parameters(self) -> None:
        """The image patch embedding is not used for points (nor the class token and position table
        without ``prefix_tokens``); they keep their pretrained values and get no gradient (and DDP
        needs no ``find_unused_parameters``)."""
        unused = list(getattr(self.backbone, 'patch_embed', nn.Identity()).parameters())
        if not self.prefix_tokens:
            unused += [getattr(self.backbone, n, None) for n in ('cls_token', 'reg_token', 'pos_embed')]
        for param in unused:
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)

    # ------------------------------------------------------------------------------------ network
    @staticmethod
    def centre(xyz: Tensor) -> Tensor:
        """``(B, N, 3)`` -> the same crops with x, y minus their mean and z minus its minimum."""
        shift = torch.cat([xyz[..., :2].mean(1, keepdim=True), xyz[..., 2:].min(1, keepdim=True)[0]],
                          -1)
        return xyz - shift

    def _check_points(self, points: Tensor) -> None:
        if points.dim() != 3 or points.shape[-1] != 3 + self.in_channels:
            raise ValueError(f'points must be (B, N, 3 + {self.in_channels}) (x y z and in_channels='
                             f'{self.in_channels} features), got {tuple(points.shape)}; check '
                             'PackPointInputs feature_keys against the model in_channels')
        if not torch.isfinite(points).all():
            raise ValueError('points contain NaN or inf values; check the room files with `python -m '
                             'dr2net_mm.points check DATA_DIR`')

    def logits(self, points: Tensor) -> Tensor:
        """``(B, N, 3 + in_channels)`` -> per-point class logits ``(B, N, num_classes)``."""
        self._check_points(points)
        xyz, feats = self.centre(points[..., :3]), points[..., 3:]
        centres, tokens = self.tokenizer(xyz, feats)
        outs = self.backbone.forward_tokens(tokens, self.centre_embed(centres), self.out_indices,
                                            prefix_tokens=self.prefix_tokens)
        fused = self.fuse(torch.cat([norm(o) for norm, o in zip(self.out_norms, outs)], -1))  # (B,M,D')
        per_point = inverse_distance_interpolate(xyz, centres, fused, k=self.interp_k)  # (B, N, D')
        glob = fused.max(1, keepdim=True).values.expand_as(per_point)
        skip = self.skip(torch.cat([xyz, feats], -1))
        return self.head(torch.cat([per_point, glob, skip], -1))

    # ------------------------------------------------------------------------------------ modes
    @staticmethod
    def _stack(inputs: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        if isinstance(inputs, Tensor):
            return inputs
        sizes = {tuple(x.shape) for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f'training needs samples of equal size (a fixed point budget: '
                             f'PointRandomCrop), got shapes {sorted(sizes)}')
        return torch.stack(list(inputs))

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]],
                data_samples: Optional[List[BaseDataElement]] = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(self._stack(inputs), data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.logits(self._stack(inputs))
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, points: Tensor, data_samples: List[BaseDataElement]) -> Dict[str, Tensor]:
        """Cross-entropy over all points of the batch (``ignore_index`` excluded) and the accuracy."""
        labels = torch.stack([s.gt_label for s in data_samples]).to(points.device)
        logits = self.logits(points)
        if labels.shape != logits.shape[:2]:
            raise ValueError(f'labels {tuple(labels.shape)} do not match the points '
                             f'{tuple(logits.shape[:2])}')
        loss = F.cross_entropy(logits.reshape(-1, self.num_classes), labels.reshape(-1),
                               ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            valid = labels != self.ignore_index
            acc = (logits.argmax(-1) == labels)[valid].float().mean()
        return dict(loss_seg=loss, acc_seg=acc)

    def predict(self, inputs: Union[Tensor, Sequence[Tensor]],
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        """Labels for every input point; whole rooms (samples with ``vote_indices``) by voting over
        crops, other samples in one forward."""
        samples = data_samples or [BaseDataElement() for _ in range(len(inputs))]
        results = []
        for points, sample in zip(inputs, samples):
            if 'vote_indices' in sample:
                probs = points.new_zeros(len(points), self.num_classes)
                for subset in sample.vote_indices:
                    probs += self.predict_points(points[subset])[sample.voxel_inverse]
            else:
                probs = self.predict_points(points)
            out = BaseDataElement(metainfo=sample.metainfo)
            out.pred_label = probs.argmax(-1)
            if 'gt_label' in sample:
                out.gt_label = sample.gt_label
            results.append(out)
        return results

    def predict_points(self, points: Tensor) -> Tensor:
        """``(V, 3 + C)`` -> class probabilities ``(V, num_classes)``, averaged over covering crops of
        ``test_cfg['crop_points']`` points (one forward when ``V`` is not larger)."""
        crop, batch = self.test_cfg['crop_points'], self.test_cfg['crop_batch']
        if crop is None or len(points) <= crop:
            return self.logits(points[None]).softmax(-1)[0]
        xyz = points[None, :, :3]
        covered = torch.zeros(len(points), dtype=torch.bool, device=points.device)
        crops = []
        while not bool(covered.all()):
            seed = int(torch.nonzero(~covered)[0])
            idx = knn(xyz[:, seed:seed + 1], xyz, crop)[1][0, 0]
            covered[idx] = True
            crops.append(idx)
        probs = points.new_zeros(len(points), self.num_classes)
        count = points.new_zeros(len(points))
        for start in range(0, len(crops), batch):
            idx = torch.stack(crops[start:start + batch])  # (b, crop)
            p = self.logits(points[idx]).softmax(-1)
            probs.index_add_(0, idx.reshape(-1), p.reshape(-1, self.num_classes))
            count.index_add_(0, idx.reshape(-1), torch.ones_like(idx.reshape(-1), dtype=count.dtype))
        return probs / count[:, None]
