"""Hooks registered into MMEngine's root HOOKS registry."""
from .alpha_beta_hook import AlphaBetaHook

__all__ = ['AlphaBetaHook']
