"""Temporal action detection (TAD) end to end on mmaction2: the paper's headline task.

``import dr2net_mm.tad`` (the TAD configs list it in ``custom_imports``) registers into mmaction2's
registries: the model :class:`~.model.TemporalActionDetector` with its head
:class:`~.head.ActionFormerHead`, the dataset :class:`~.data.ActivityNetTADDataset` with its
transforms, and the metric :class:`~.metric.ActivityNetDetectionMetric`. docs/tad.md describes them.
"""
from .. import mmaction_compat as _compat

_compat.install()  # before mmaction.models is first imported (see dr2net_mm/mmaction_compat.py)

from .data import ActivityNetTADDataset, DecodeWholeVideo, PackTADInputs  # noqa: E402
from .head import ActionFormerHead  # noqa: E402
from .metric import ActivityNetDetectionMetric  # noqa: E402
from .model import TemporalActionDetector  # noqa: E402

__all__ = ['ActionFormerHead', 'ActivityNetDetectionMetric', 'ActivityNetTADDataset',
           'DecodeWholeVideo', 'PackTADInputs', 'TemporalActionDetector']
