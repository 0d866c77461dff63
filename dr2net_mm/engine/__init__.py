"""Hooks registered into MMEngine's root HOOKS registry."""
from .alpha_beta_hook import AlphaBetaHook
from .checkpoints import SafeCheckpointHook, find_resume_checkpoint
from .reversible_guard import ReversibleGuardHook

__all__ = ['AlphaBetaHook', 'ReversibleGuardHook', 'SafeCheckpointHook', 'find_resume_checkpoint']
