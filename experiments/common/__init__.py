"""Shared by every study: output files and the thin `main`."""
