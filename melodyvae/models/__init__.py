"""Shipped model files (safetensors weights + JSON config)."""
