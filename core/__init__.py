"""vqgen's shared plumbing, the bottom layer: errors, settings, run folders, data, the training loop.

Every stage and the command line import from here; nothing here imports a stage or `vqgen/`.
"""

__version__ = "0.1.0"
