"""The root of the CLI: version, the command list, lazy imports, domain errors as one line."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from ppar_cli.main import app
from ppar_core import __version__
from ppar_core.config import TRAIN_PRESETS

COMMANDS = (
    "data", "models", "prototypes", "train", "demo", "eval", "eval-predictions", "predict", "analyze-weights",
    "export", "runs", "plot",
)  # fmt: skip


def test_version(cli) -> None:
    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"ppar {__version__}"


def test_help_lists_every_command_with_real_help(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in COMMANDS:
        assert command in result.out
        sub = cli(command, "--help")
        assert sub.code == 0, command
        assert "being written" not in sub.out, command


def _all_commands() -> list[list[str]]:
    """Every command and command group of the real app, as argument lists (`["data", "check"]`, `["data"]`, ...)."""
    import typer

    from ppar_cli.main import app

    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                found.append([*path, name])
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_and_group_has_help_with_an_example_and_defaults(cli) -> None:
    commands = _all_commands()
    assert {"export", "eval-predictions", "runs", "plot"} <= {c[0] for c in commands}
    assert ["data", "list"] in commands and ["runs", "compare"] in commands
    for command in commands:
        result = cli(*command, "--help")
        assert result.code == 0 and "example" in result.out.lower(), command
        assert "<bool>" not in result.out, command  # a flag shows no value placeholder


def test_no_arguments_shows_help(cli) -> None:
    result = cli()
    assert "Usage" in result.out + result.err


def test_usage_errors_are_one_line_and_exit_1(cli) -> None:
    for args, needle in [
        (("train", "--no-such-flag"), "No such option: --no-such-flag"),
        (("no-such-command",), "No such command"),
        (("eval", "--target", "x"), "did you mean --targets?"),
        (("eval", "ckpt.safetensors", "--json", "true"), "--json is a flag and takes no value"),
    ]:
        result = cli(*args)
        assert result.code == 1, args
        assert needle in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert "Traceback" not in result.err


def test_importing_the_cli_is_light() -> None:
    # `ppar --help` must answer at once: no torch, open_clip, cv2 or numpy-heavy library modules at import time.
    code = "import sys, ppar_cli.main; print(sorted(m for m in ('torch', 'open_clip', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_help_reads_whole_at_80_columns_and_train_names_every_preset() -> None:
    # Rich cuts a word too long for its column with "…": no help may lose text that way in an 80-column log.
    runner = CliRunner()
    for command in _all_commands():
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0 and "…" not in result.output, (command, result.output)
        if command == ["train"]:
            assert all(name in " ".join(result.output.split()) for name in TRAIN_PRESETS)
