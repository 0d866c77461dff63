"""Hooks registered into MMEngine's root HOOKS registry."""
