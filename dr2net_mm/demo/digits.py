"""Real data for ``make reproduce`` (tools/reproduce.py): scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` reads ``sklearn/datasets/data/digits.csv.gz``, which ships inside
the scikit-learn wheel (1797 images of 8x8 pixels, values 0..16, UCI "optdigits" test set); nothing
is downloaded.

* Source task (pretraining): classify the digits 0-4 (2/3 of their images; the other third measures
  the source accuracy). :func:`pretrain` trains a plain timm ``VisionTransformer`` on it and saves
  its state dict, the usual timm checkpoint layout.
* Downstream task (finetuning): classify the digits 5-9, classes the backbone never saw, from a small
  training set (:data:`TARGET_TRAIN_PER_CLASS` images per class); the rest is the test set.

For the MMEngine runner this module registers ``DigitsDataset`` (DATASETS), ``DigitClassifier``
(MODELS: a backbone, the mean of its last feature map, a linear head) and ``DigitAccuracy``
(METRICS).
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch import Tensor, nn
from torch.utils.data import Dataset

TARGET_TRAIN_PER_CLASS = 30
# the tiny ViT shared by pretraining (timm) and finetuning (Dr2NetViT / PlainViT)
VIT = dict(img_size=8, patch_size=2, in_channels=1, embed_dims=64, depth=4, num_heads=4)


def digit_splits() -> Dict[str, tuple]:
    """{split: (images float32 (N, 1, 8, 8) in [-1, 1], labels int64 (N,))} for the splits
    'source_train', 'source_test' (digits 0-4, labels 0-4) and 'target_train', 'target_test'
    (digits 5-9, labels 0-4 = digit - 5). Fixed: the same for every seed."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    labels = digits.target.astype(np.int64)
    source = np.flatnonzero(labels < 5)
    cut = len(source) * 2 // 3
    target_train = np.concatenate(
        [np.flatnonzero(labels == d)[:TARGET_TRAIN_PER_CLASS] for d in range(5, 10)])
    target_test = np.setdiff1d(np.flatnonzero(labels >= 5), target_train)
    splits = dict(source_train=(source[:cut], 0), source_test=(source[cut:], 0),
                  target_train=(target_train, 5), target_test=(target_test, 5))
    return {name: (torch.from_numpy(images[idx]), torch.from_numpy(labels[idx] - offset))
            for name, (idx, offset) in splits.items()}


@DATASETS.register_module()
class DigitsDataset(Dataset):
    """One split of :func:`digit_splits`; items ``dict(inputs=(1, 8, 8) tensor, labels=int tensor)``
    (batch them with ``collate_fn=dict(type='default_collate')``)."""

    def __init__(self, split: str):
        self.images, self.labels = digit_splits()[split]
        self.metainfo = dict(split=split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.images[index], labels=self.labels[index])


@MODELS.register_module()
class DigitClassifier(BaseModel):
    """``backbone`` (a registered config, e.g. Dr2NetViT) -> mean over its last feature map -> linear
    head. ``frozen=True``: the backbone gets no gradients and stays in eval mode (a linear probe)."""

    def __init__(self, backbone: dict, num_classes: int = 5, frozen: bool = False,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = nn.Linear(self.backbone.embed_dims, num_classes)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> 'DigitClassifier':
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, inputs: Tensor, labels: Optional[Tensor] = None, mode: str = 'tensor'):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.backbone(inputs)[-1].mean(dim=(2, 3))
        logits = self.head(features)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == 'predict':
            return list(zip(logits.argmax(dim=1).tolist(), labels.tolist()))
        return logits


@METRICS.register_module()
class DigitAccuracy(BaseMetric):
    """Top-1 accuracy in percent, as ``accuracy``."""

    def process(self, data_batch, data_samples: Sequence) -> None:
        self.results.extend(int(pred == label) for pred, label in data_samples)

    def compute_metrics(self, results: list) -> dict:
        return dict(accuracy=100.0 * sum(results) / len(results))


def timm_vit(num_classes: int) -> nn.Module:
    """The conventional (non-reversible) timm ViT of :data:`VIT`, classifying the mean patch token
    after the final norm -- what DigitClassifier computes on top of Dr2NetViT/PlainViT."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=VIT['img_size'], patch_size=VIT['patch_size'],
                             in_chans=VIT['in_channels'], embed_dim=VIT['embed_dims'],
                             depth=VIT['depth'], num_heads=VIT['num_heads'], num_classes=num_classes,
                             global_pool='avg', fc_norm=False)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * (model(images).argmax(dim=1) == labels).float().mean().item()


def pretrain(path: str, iters: int = 1500, batch_size: int = 64, lr: float = 1e-3,
             seed: int = 0) -> float:
    """Pretrain the timm ViT on the source task (digits 0-4) with plain PyTorch, save its state dict
    (timm layout, classifier included) to ``path``; return its source test accuracy (%)."""
    torch.manual_seed(seed)
    splits = digit_splits()
    images, labels = splits['source_train']
    model = timm_vit(num_classes=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iters)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(iters):
        batch = torch.randint(len(labels), (batch_size, ), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    torch.save(model.state_dict(), path)
    return accuracy(model, *splits['source_test'])
