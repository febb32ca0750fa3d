"""The OSC server (installed as melodyvae.server)."""
