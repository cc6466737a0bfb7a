"""tutorial_lib: the tested helpers behind the chapters of *From Zero - Building and
Fine-tuning Deep Models with PyTorch*.

Organised by concern, not by chapter: ``runtime`` (device, seeding, profiles), ``data``
(loaders behind one resolution rule), ``weights`` (pretrained weights with an offline
fallback), ``conv`` (chapter 1's convolution math) and ``plots``.
"""

__version__ = "0.1.0"
