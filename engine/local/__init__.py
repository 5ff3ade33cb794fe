"""The embedded local engine: a randomly initialised Transformer and a continuous batcher.

Nothing is imported here on purpose: :mod:`soaktop.engine.local.presets` is torch-free, so listing
or validating presets must not load torch through this package's ``__init__``.
"""
