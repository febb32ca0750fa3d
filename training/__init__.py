"""Corpus building, training, evaluation and latent axes (installed as melodyvae.training)."""
