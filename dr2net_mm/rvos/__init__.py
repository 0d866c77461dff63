"""Referring video object segmentation (RVOS), MTTR-style, on MMEngine and mmaction2: the paper's
fifth task (A2D-Sentences with a Kinetics-pretrained Video Swin-T).

``import dr2net_mm.rvos`` (the RVOS configs list it in ``custom_imports``) registers into
mmaction2's registries: the model :class:`~.model.ReferringVideoSegmentor`, the dataset
:class:`~.data.A2DSentencesDataset` with its transforms, and the metric
:class:`~.metric.ReferringSegmentationMetric`. docs/rvos.md describes them.
"""
from .. import mmaction_compat as _compat

_compat.install()  # before mmaction.models is first imported (see dr2net_mm/mmaction_compat.py)

from .data import (A2DSentencesDataset, DecodeReferringClip, PackReferringInputs,  # noqa: E402
                   ResizeReferringClip)
from .metric import ReferringSegmentationMetric  # noqa: E402
from .model import ReferringVideoSegmentor  # noqa: E402

__all__ = ['A2DSentencesDataset', 'DecodeReferringClip', 'PackReferringInputs',
           'ReferringSegmentationMetric', 'ReferringVideoSegmentor', 'ResizeReferringClip']
