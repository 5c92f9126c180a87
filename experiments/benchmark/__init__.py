"""Step-time benchmark: dpjax's DP step against its non-private step and Opacus."""
