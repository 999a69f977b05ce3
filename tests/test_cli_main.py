"""The root of the CLI: version, the command list, lazy imports, domain errors as one line."""

from __future__ import annotations

import subprocess
import sys

from ppar_core import __version__

COMMANDS = ("data", "models", "prototypes", "train", "demo", "eval", "predict", "analyze-weights")


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


def test_every_leaf_command_help_has_an_example(cli) -> None:
    leaves = [
        ["data", "check"],
        ["data", "synth"],
        ["data", "list"],
        ["models", "list"],
        ["prototypes", "build"],
        ["prototypes", "show"],
        ["train"],
        ["demo"],
        ["eval"],
        ["predict"],
        ["analyze-weights"],
    ]
    for leaf in leaves:
        result = cli(*leaf, "--help")
        assert result.code == 0 and "example" in result.out.lower(), leaf


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
