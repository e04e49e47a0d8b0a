"""How the command-line tools report unusable input: one line ``error: <sentence>`` and exit status 2.

Every tool decorates its ``main(argv)`` with :func:`reports_usage_errors`. The toolkit signals input it
cannot use (a missing or unreadable file, a wrong-typed recipe value, a malformed annotation) with
``ValueError`` (``ConfigError``, ``CheckpointError`` and ``ImageReadError`` are kinds of it) or an
``OSError`` about a path (any that names a file: a read-only folder, a full disk), an unknown registered
name with ``UnknownNameError`` and a name whose optional dependency is not installed with
``MissingExtraError``; those become one line on stderr naming the culprit. Ctrl-C ends a tool with one
line, ``interrupted``, and status 130 (what work survives is the tool's to say before). Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator

from structured.registry import MissingExtraError, UnknownNameError

USAGE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, UnknownNameError, MissingExtraError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
    PermissionError,
)
"""The exception types that mean "this input cannot be used", not "the toolkit has a bug"."""

USAGE_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (runs of whitespace, newlines included, become one space).

    An ``OSError`` raised by the system about a path reads ``<path>: <reason>`` (``<path> -> <target>`` for a
    move), without the ``[Errno N]`` prefix."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        paths = str(error.filename) if error.filename2 is None else f"{error.filename} -> {error.filename2}"
        return f"{paths}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def is_usage_error(error: BaseException) -> bool:
    """Whether ``error`` means "this input cannot be used": one of ``USAGE_ERRORS``, or an ``OSError`` naming a
    file (the system refusing a path: a read-only or full disk, a path that is a file where a folder was meant)."""
    return isinstance(error, USAGE_ERRORS) or (isinstance(error, OSError) and error.filename is not None)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """A block where each warning is shown as ``warning: <message>`` (the data readers report skipped or repaired
    annotations as warnings; Python's default format adds the file, line and source line of the call)."""
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {message}\n"


def reports_usage_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a tool's ``main(argv)`` so unusable input prints ``error: <sentence>`` and returns status 2, and Ctrl-C
    prints ``interrupted`` and returns 130."""

    @functools.wraps(main)
    def guarded(argv: list[str] | None = None) -> int:
        try:
            with one_line_warnings():
                return main(argv)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_STATUS
        except Exception as error:
            if not is_usage_error(error):
                raise
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
