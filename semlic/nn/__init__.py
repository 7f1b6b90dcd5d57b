"""Network parts the methods share: convolution blocks, PatchGAN discriminators, losses."""
