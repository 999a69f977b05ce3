"""What every command shares: consoles, common option aliases, JSON output.

Command modules import torch and the library lazily, inside their bodies, so that `ppar --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# Human output goes to stdout through rich; errors and progress go to stderr, so `--json` output stays clean. Text
# lines are never broken by rich (soft wrap): a terminal wraps them itself, a log file keeps them whole. No automatic
# highlighting: it would colour "0x1280" of a size 720x1280 as a hex number; styles are given where they mean something.
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


class Interrupt:
    """Ctrl-C or SIGTERM during a command: `requested` once the signal came (set by `ppar_cli.main`), `reported` once a
    command said what it means for its work (else main prints a plain "Interrupted.")."""

    requested = False
    reported = False


def report_interrupt(message: str) -> None:
    """Print what an interruption means for the command's work (one yellow line) and mark it said."""
    err_console.print(message, style="yellow", markup=False, highlight=False)
    Interrupt.reported = True


DataRootOption = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder holding one sub-folder per dataset (default: $PPAR_DATA).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of tables.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]


def print_json(obj: Any) -> None:
    """Write `obj` as one JSON document to stdout (no rich formatting, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
