"""DP image classifiers: DP-SGD, local DP and non-private training compared on one table."""
