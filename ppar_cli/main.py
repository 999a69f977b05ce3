"""The root of the `ppar` command line: mounts one module per command group, turns domain errors into one line.

Every command module keeps its heavy imports inside the command bodies, so `ppar --help` answers at once.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.text import Text

from ppar_cli import analyze, data, demo, evaluate, models, predict, prototypes, train
from ppar_cli.options import err_console
from ppar_core import PparError, __version__

app = typer.Typer(
    name="ppar",
    help="Domain-generalizable semantic segmentation with CLIP (PPAR, a documented reconstruction).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(prototypes.app, name="prototypes")
app.add_typer(models.app, name="models")
app.command("train", help=train.HELP)(train.command)
app.command("demo", help=demo.HELP)(demo.command)
app.command("eval", help=evaluate.HELP)(evaluate.command)
app.command("eval-predictions", help=evaluate.PREDICTIONS_HELP)(evaluate.predictions_command)
app.command("predict", help=predict.HELP)(predict.command)
app.command("analyze-weights", help=analyze.HELP)(analyze.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ppar {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
) -> None:
    """ppar: train on a synthetic source domain, segment real domains it never saw."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. `--debug` anywhere on the line shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="ppar")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except PparError as exc:
        if debug:
            raise
        err_console.print(Text("error: ", style="bold red") + Text(str(exc), style="red"), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print(Text("Interrupted.", style="yellow"))
        return 130
    return 0
