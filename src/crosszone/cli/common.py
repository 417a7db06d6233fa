"""What every command shares: option types, consoles, and errors turned into exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from crosszone.errors import ConfigError, CrosszoneError

EXIT_ERROR = 1  # the runtime is not in the state the command needs
EXIT_CONFIG = 2  # the topology or the command line is wrong

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="topology file (default: the built-in local topology)",
                 dir_okay=False),
]
RunDirOption = Annotated[
    Path | None,
    typer.Option("--run-dir", help="run directory (default: $CROSSZONE_RUN_DIR or ./.crosszone)",
                 file_okay=False),
]


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Print a crosszone error as a message, never a traceback, and exit 2 (config) or 1."""
    try:
        yield
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {plain(exc)}")
        raise typer.Exit(EXIT_CONFIG) from None
    except CrosszoneError as exc:
        err.print(f"[bold red]error:[/] {plain(exc)}")
        raise typer.Exit(EXIT_ERROR) from None


def plain(text: object) -> str:
    """Escape rich markup in text that comes from users or logs."""
    return escape(str(text))
