"""The DP GAN study: synthetic clinical-trial participants from a private AC-GAN, judged by TSTR."""
