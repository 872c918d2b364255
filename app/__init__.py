"""Serving side: reads the model repository and serves it. Never imports torch or ``training``."""

__version__ = "0.1.0"
