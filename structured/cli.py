"""How the command-line tools report unusable input: one line ``error: <sentence>`` and exit status 2.

Every tool decorates its ``main(argv)`` with :func:`reports_usage_errors`. The toolkit signals input it
cannot use (a missing or unreadable file, a wrong-typed recipe value, a malformed annotation) with
``ValueError`` (``ConfigError``, ``CheckpointError`` and ``ImageReadError`` are kinds of it) or an
``OSError`` about a path, an unknown registered name with ``UnknownNameError`` and a name whose optional
dependency is not installed with ``MissingExtraError``; those become one line on stderr naming the culprit. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from structured.registry import MissingExtraError, UnknownNameError

USAGE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, UnknownNameError, MissingExtraError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
    PermissionError,
)
"""The exception types that mean "this input cannot be used", not "the toolkit has a bug"."""

USAGE_ERROR_STATUS = 2


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(error).split()) or type(error).__name__


def reports_usage_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a tool's ``main(argv)`` so unusable input prints ``error: <sentence>`` and returns status 2."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USAGE_ERRORS as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return USAGE_ERROR_STATUS

    return guarded


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` ``type`` for a count: an integer >= ``minimum``, else argparse's usage error naming the
    option (``argument --batch-size: must be an integer >= 1, got '0'``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse
