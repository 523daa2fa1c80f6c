"""vqgen's top layer: the command line, the pipeline and its report (the plumbing is in core/)."""

from core import __version__

__all__ = ["__version__"]
