"""Stable Diffusion 1.x / 2.x adapter (placeholder until written)."""
