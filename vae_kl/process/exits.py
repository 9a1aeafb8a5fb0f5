"""This program's exit statuses and the one error path every entry point takes.

Every entry point (train.py, evaluate.py, sweep.py) runs its work through `guard`, which turns a
`UserError` (a bad config, bad data, an unusable run folder; each module raises its own subclass)
into one `error:` line and exit status 2, a missing requirement or a machine fault (OSError) into
exit status 4, and Ctrl-C into 130. `train.run` raises the same UserError subclasses to Python.
"""

import argparse
import errno
import os
import re
import reprlib
import sys
from collections.abc import Callable
from typing import Optional

# The exit statuses, one set for every entry point (docs/reliability.md lists them). 1 is sweep.py's "a run failed".
EXIT_SWEEP_RUN_FAILED, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


class UserError(ValueError):
    """A problem with what the user gave (a setting, a file, a folder), said in one line with its fix."""


class ArgumentError(UserError):
    """A command-line option the entry point does not take, or a bad value for one."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are raised as ArgumentError, so that they take the one error path (guard:
    one `error:` line, exit status 2) rather than argparse's usage block. hint: a function of an unknown flag
    ("--epochs") giving a sentence that says what was meant, or None."""

    def __init__(self, *args, hint=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def error(self, message):
        hints = [self.hint(flag) for flag in re.findall(r"(?<![\w-])--?[\w-]+", message)] if self.hint else []
        hint = next((text for text in hints if text), None)
        raise ArgumentError(f"{message}{f'; {hint}' if hint else ''} (see python {self.prog} --help).")


class EnvironmentFault(Exception):
    """A problem of the machine or its surroundings, not of the input (other machines that never joined, a
    missing optional requirement), said in one line with its fix: exit status 4."""


def first_line(error: object, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters, for one-line errors."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


HANDLED = (UserError, EnvironmentFault, KeyboardInterrupt, ImportError, OSError)  # What `report` has words for.


def guard(action: Callable[[], Optional[int]]) -> int:
    """Run an entry point's action(); an error it raises becomes `report`'s one line and exit status.
    Returns the exit status (action's own, or 0)."""
    try:
        return action() or 0
    except HANDLED as error:
        return report(error)


def report(error: BaseException) -> int:
    """Say an error in one `error:` line on stderr and return its exit status: the one error path of every
    entry point (guard, and a watchdog thread through fail_now). A user error is 2, Ctrl-C 130, a missing
    requirement or a fault of the machine (OSError: a full disk, a folder gone) 4."""
    if isinstance(error, UserError):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(error, KeyboardInterrupt):
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, EnvironmentFault):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if isinstance(error, ImportError):  # A requirement missing from this Python: the environment, not the input.
        print(f"error: {first_line(error)}; install the requirements with pip install -r requirements.txt.",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    if isinstance(error, OSError):
        print(f"error: {os_error_text(error)}. Nothing finished is lost: fix that and run the same command again "
              f"to resume from the last checkpoint.", file=sys.stderr)
        return EXIT_ENVIRONMENT
    raise error


def fail_now(error: BaseException) -> None:
    """End the process at once with `report`'s line and status: for a watchdog thread, while the main thread
    waits inside TensorFlow's C++ code, where no exception would reach it."""
    exit_now(report(error))


def exit_now(status: int) -> None:
    """Flush and end the process with `status`, skipping the interpreter's teardown: after a failed write,
    h5py's objects print tracebacks and can crash (SIGSEGV) while they are destroyed, which would turn one
    `error:` line and exit status 4 into a screen of text and 139. Everything a run keeps is written already."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def os_error_text(error: OSError) -> str:
    """An OSError in a few words on one line: 'No space left on device (path)' also when a library (h5py)
    wraps errno 28 in a message of several lines."""
    text = str(error.strerror or error)
    if error.errno == errno.ENOSPC or "errno = 28" in text:
        text = os.strerror(errno.ENOSPC)
    where = f" ({error.filename})" if error.filename else ""
    return first_line(text) + where


QUOTE_LIMIT = 80  # Characters of a received value an error message quotes.

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_LIMIT
_REPR.maxlevel = 3


def quote(value: object) -> str:
    """repr(value), cut to QUOTE_LIMIT characters, so an error message never formats a huge value."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a 5,000-digit int raises.
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT - 3] + "..."
