"""The reversible dual-residual engine: pure PyTorch, no OpenMMLab imports.

``ReversibleSequence`` runs Eq. 1 forward and rebuilds activations with Eq. 2 in backward;
``gradient_error`` measures how precise that backward is; ``count_saved_bytes`` measures what a forward
keeps for backward.
"""
from .memory import SavedBytes, count_saved_bytes
from .precision import (ErrorSummary, GradientErrorReport, compute_gradients, gradient_error,
                        relative_error, weighted_sum_loss)
from ..checks import check_coefficients
from .reversible import ReversibleSequence, reversible_stages, set_reversible, set_stream_dtype
from .streams import branch_input, dual_residual_step

__all__ = [
    'ReversibleSequence', 'branch_input', 'check_coefficients', 'dual_residual_step',
    'reversible_stages',
    'set_reversible', 'set_stream_dtype', 'gradient_error', 'compute_gradients', 'relative_error',
    'weighted_sum_loss',
    'ErrorSummary', 'GradientErrorReport', 'count_saved_bytes', 'SavedBytes'
]
