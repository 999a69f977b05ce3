"""The one exception type of the domain.

A `PparError` carries a single sentence meant for a person: what is wrong, which file, what to do. The CLI prints it
as one red line and exits with code 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations


class PparError(Exception):
    """An error the user can fix (bad input, missing file, wrong layout); never a bug in ppar."""
