"""ppar: domain-generalizable semantic segmentation with CLIP (PPAR, a documented reconstruction).

The library imports neither typer nor rich; heavy dependencies (torch, open_clip) are imported by the modules that
need them, so importing `ppar_core` itself is instant.
"""

from __future__ import annotations

from ppar_core.errors import PparError

__version__ = "0.1.0"

__all__ = ["PparError", "__version__"]
