"""The eQTL study's config files, one per preset (see ../README.md)."""
