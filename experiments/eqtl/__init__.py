"""The eQTL study: DP linear regression (DP-SGD, AdaSSP) of gene expression on SNP genotypes."""
