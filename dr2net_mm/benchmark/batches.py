"""Synthetic training batches for the benchmark variants, in the format each model's dataloader gives:
image tensors, mmdet / mmseg batches and Pix4Point point crops (random, seeded)."""
from typing import Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ['image_batch', 'detector_batch', 'segmentor_batch', 'synthetic_point_batch']


def image_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen).to(device)


def detector_batch(batch: int, size: Union[int, Tuple[int, int]], num_classes: int,
                   seed: int = 0) -> dict:
    """A synthetic mmdet training batch: images of ``size`` (an int for squares, or (h, w)) and 3
    random boxes per image."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append((torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8))
        extent = torch.tensor([w, h], dtype=torch.float32)
        xy = torch.rand(3, 2, generator=gen) * extent * 0.6
        wh = torch.rand(3, 2, generator=gen) * extent * 0.3 + extent * 0.05
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0), pad_shape=(h, w),
                                             batch_input_shape=(h, w)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, num_classes, (3, ), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def segmentor_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """A synthetic mmseg training batch: images and label maps of random rectangles."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append((torch.rand(3, size, size, generator=gen) * 255).to(torch.uint8))
        labels = torch.zeros(1, size, size, dtype=torch.long)
        for _ in range(3):
            x0, y0 = torch.randint(0, size // 2, (2, ), generator=gen).tolist()
            labels[:, y0:y0 + size // 2, x0:x0 + size // 2] = int(
                torch.randint(0, num_classes, (1, ), generator=gen))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def synthetic_point_batch(model: nn.Module, num_points: int, batch: int, seed: int = 0) -> dict:
    """A training batch for ``model`` in the dataloader's format: ``batch`` crops of ``num_points``
    points uniform in a 6 m x 6 m x 3 m room, random features (``model.in_channels``) and random
    labels (``model.num_classes``)."""
    from mmengine.structures import BaseDataElement
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        xyz = torch.rand(num_points, 3, generator=gen) * torch.tensor([6.0, 6.0, 3.0])
        feats = torch.rand(num_points, model.in_channels, generator=gen)
        inputs.append(torch.cat([xyz, feats], 1))
        sample = BaseDataElement()
        sample.gt_label = torch.randint(0, model.num_classes, (num_points, ), generator=gen)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
