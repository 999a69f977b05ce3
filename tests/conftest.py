"""Shared test fixtures. Tests never touch the network: HF_HUB_OFFLINE=1 and only the `tiny` preset."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `ppar ARGS...` in-process through the real entry point; returns exit code, stdout and stderr."""
    from ppar_cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
