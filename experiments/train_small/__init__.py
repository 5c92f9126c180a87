"""A small resumable DP-SGD run: the kill-and-resume, privacy-change and budget checks."""
