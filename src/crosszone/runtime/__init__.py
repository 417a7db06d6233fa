"""Run a whole deployment on one machine: run directory, supervisor, one-component servers."""

from crosszone.runtime.rundir import RunDir, default_run_dir
from crosszone.runtime.stack import (
    LocalStack,
    NothingRunningError,
    StackAlreadyRunningError,
    StackStartError,
    StartProgress,
)

__all__ = [
    "LocalStack",
    "NothingRunningError",
    "RunDir",
    "StackAlreadyRunningError",
    "StackStartError",
    "StartProgress",
    "default_run_dir",
]
