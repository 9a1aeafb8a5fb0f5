"""This program's exit statuses and the one error path every entry point takes.

Every entry point (train.py, evaluate.py, sweep.py) runs its work through `guard`, which turns a
`UserError` (a bad config, bad data, an unusable run folder; each module raises its own subclass)
into one `error:` line and exit status 2, a missing requirement or a machine fault (OSError) into
exit status 4, and Ctrl-C into 130. `train.run` raises the same UserError subclasses to Python.
"""

import errno
import os
import sys

# The exit statuses, one set for every entry point (docs/reliability.md lists them). 1 is sweep.py's "a run failed".
EXIT_SWEEP_RUN_FAILED, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


class UserError(ValueError):
    """A problem with what the user gave (a setting, a file, a folder), said in one line with its fix."""


def first_line(error, limit=200):
    """The first line of an exception's message, at most `limit` characters, for one-line errors."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def guard(action):
    """Run an entry point's action(); a user error becomes one `error:` line and exit status 2,
    Ctrl-C exit status 130. Returns the exit status (action's own, or 0)."""
    try:
        return action() or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as error:  # A requirement missing from this Python: the environment, not the input.
        print(f"error: {first_line(error)}; install the requirements with pip install -r requirements.txt.",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as error:  # The machine, not the input: a full disk, a folder gone, a permission changed.
        print(f"error: {os_error_text(error)}. Nothing finished is lost: fix that and run the same command again "
              f"to resume from the last checkpoint.", file=sys.stderr)
        return EXIT_ENVIRONMENT


def exit_now(status):
    """Flush and end the process with `status`, skipping the interpreter's teardown: after a failed write,
    h5py's objects print tracebacks and can crash (SIGSEGV) while they are destroyed, which would turn one
    `error:` line and exit status 4 into a screen of text and 139. Everything a run keeps is written already."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def os_error_text(error):
    """An OSError in a few words on one line: 'No space left on device (path)' also when a library (h5py)
    wraps errno 28 in a message of several lines."""
    text = str(error.strerror or error)
    if error.errno == errno.ENOSPC or "errno = 28" in text:
        text = os.strerror(errno.ENOSPC)
    where = f" ({error.filename})" if error.filename else ""
    return first_line(text) + where
