"""`ppar prototypes`: (being written)."""

import typer

app = typer.Typer(help="prototypes commands.", no_args_is_help=True)
