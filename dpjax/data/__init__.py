"""Data loaders: eQTL genotypes and expression, images, clinical trials."""
