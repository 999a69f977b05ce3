"""(being written)"""

from __future__ import annotations

HELP = "(being written)"


def command() -> None:
    """(being written)"""
