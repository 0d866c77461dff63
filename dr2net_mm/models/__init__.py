"""Backbones registered into MMEngine's root MODELS registry."""
