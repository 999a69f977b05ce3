"""The version of ppar (one place: the package metadata and every checkpoint read it from here)."""

__version__ = "0.1.0"
