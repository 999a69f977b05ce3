"""The root of the `ppar` command line: mounts one module per command group, turns every error into one line.

Every command module keeps its heavy imports inside the command bodies, so `ppar --help` answers at once. Errors of
the domain (`PparError`) and usage errors (an unknown option, a missing argument) print one line on stderr and exit
with code 1; `--debug` anywhere on the line shows the traceback instead. Ctrl-C and SIGTERM print "Interrupted." and
exit with 130 (a training run saves a checkpoint first: see ppar_core.engine.interrupt).
"""

from __future__ import annotations

import difflib
import signal
import sys
from typing import Annotated, Any

import typer
import typer.core
from rich.text import Text

try:  # typer 0.2x carries its own copy of click; older releases use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

from ppar_cli import analyze, data, demo, evaluate, export, models, plot, predict, pretrain, prototypes, runs, train
from ppar_cli.options import Interrupt, err_console
from ppar_cli.render import setup_logging
from ppar_core import PparError, __version__

app = typer.Typer(
    name="ppar",
    help="Domain-generalizable semantic segmentation with CLIP (PPAR, a documented reconstruction).\n\n"
    "Example: [bold]ppar train --source gta5 --targets cityscapes,bdd[/bold], then [bold]ppar predict img.png[/bold]"
    " and [bold]ppar analyze-weights[/bold].",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(prototypes.app, name="prototypes")
app.add_typer(models.app, name="models")
app.add_typer(runs.app, name="runs")
app.command("train", help=train.HELP)(train.command)
app.command("demo", help=demo.HELP)(demo.command)
app.command("eval", help=evaluate.HELP)(evaluate.command)
app.command("eval-predictions", help=evaluate.PREDICTIONS_HELP)(evaluate.predictions_command)
app.command("predict", help=predict.HELP)(predict.command)
app.command("analyze-weights", help=analyze.HELP)(analyze.command)
app.command("plot", help=plot.HELP)(plot.command)
app.command("export", help=export.HELP)(export.command)
app.command("pretrain", help=pretrain.HELP)(pretrain.command)

_TYPE_LABEL = typer.core.TyperOption.display_type_rich


def _type_label(self: typer.core.TyperOption, ctx: Any) -> str | None:
    # A flag takes no value: show `--json`, not `--json <bool>`, in every help panel.
    return None if self.is_flag else _TYPE_LABEL(self, ctx)


typer.core.TyperOption.display_type_rich = _type_label  # type: ignore[method-assign]


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


def _flags_given_a_value(command: Any, args: list[str]) -> None:
    """`--json true`: a flag takes no value, and `true` would otherwise be read as an input (a file name)."""
    for arg in args:
        if arg in getattr(command, "commands", {}):
            command = command.commands[arg]
    flags = {name for p in command.params if getattr(p, "is_flag", False) for name in p.opts}
    for flag, value in zip(args, args[1:], strict=False):
        if flag in flags and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            raise PparError(f"{flag} is a flag and takes no value: write {flag} alone (drop {value!r}).")


def _interrupt(signum: int, frame: Any) -> None:
    Interrupt.requested = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. `--debug` anywhere on the line shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    setup_logging()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    Interrupt.requested = Interrupt.reported = False
    try:
        for sig in previous:  # SIGTERM is what timeout, SLURM and docker send: stop as Ctrl-C does
            signal.signal(sig, _interrupt)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        previous = {}
    try:
        _flags_given_a_value(command, args)
        code = command.main(args=args, prog_name="ppar", standalone_mode=False)
        if code == 130 and Interrupt.requested and not Interrupt.reported:  # typer returns 130 for a KeyboardInterrupt
            err_console.print(Text("Interrupted.", style="yellow"))
    except click_errors.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            exc.ctx.command.get_help(exc.ctx)  # typer prints its rich help itself and returns ""
        return 0
    except click_errors.UsageError as exc:
        if debug:
            raise
        message = exc.format_message()
        if isinstance(exc, click_errors.NoSuchOption) and exc.possibilities:
            close = difflib.get_close_matches(exc.option_name, exc.possibilities, n=1, cutoff=0.5)
            message = f"No such option: {exc.option_name}" + (f"; did you mean {close[0]}?" if close else ".")
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _error(f"{message}{where}")
        return 1
    except PparError as exc:
        if debug:
            raise
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        err_console.print(Text("Interrupted.", style="yellow"))
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if isinstance(code, int) else 0


def _error(message: str) -> None:
    text = " ".join(message.split())  # one line, whatever the message held
    err_console.print(Text("error: ", style="bold red") + Text(text, style="red"), soft_wrap=True)
