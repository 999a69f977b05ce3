"""The `ppar` command line: a thin Typer layer over `ppar_core`."""
