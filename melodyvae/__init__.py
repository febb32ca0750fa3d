"""melodyvae: a hierarchical melody VAE you play like an instrument."""

__version__ = "0.1.0"
