"""vqgen: a VQ-VAE tokenizer and an autoregressive prior, from training to FID."""

__version__ = "0.1.0"
