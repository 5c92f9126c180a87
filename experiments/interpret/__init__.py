"""Interpretability of DP classifiers: Grad-CAM, its metrics, certified robust attributions."""
