"""The benchmark's config files, one per row of the performance table (see ../README.md)."""
