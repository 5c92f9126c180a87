"""Flax models used by the studies."""
