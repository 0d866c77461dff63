"""Hooks registered into MMEngine's root HOOKS registry."""
from .alpha_beta_hook import AlphaBetaHook
from .checkpoints import SafeCheckpointHook, find_resume_checkpoint

__all__ = ['AlphaBetaHook', 'SafeCheckpointHook', 'find_resume_checkpoint']
