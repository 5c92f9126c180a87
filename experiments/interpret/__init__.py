"""Interpretability of (DP) classifiers."""
