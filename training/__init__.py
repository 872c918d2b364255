"""Offline PyTorch training package: model families, data, trainer and ONNX export.

The serving side (``app``) never imports this package; the two meet only in the model repository
(``models/``), whose format is described by :mod:`app.core.repository_format`.
"""
